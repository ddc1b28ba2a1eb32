"""Build a model on the ``meta`` device and summarize it as an :class:`ArchSpec` (needs torch).

Nothing is allocated and nothing is downloaded: ``accelerate.init_empty_weights`` puts every
parameter on ``meta``; the counts are exact because they come from the real ``transformers`` class.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from typing import Any

from .arch import ArchSpec, LinearFamily
from .errors import UnsupportedModelError
from .introspect_towers import LOSS_IN_LOGITS_DTYPE, detect_towers, layout_for, text_overrides, tower_scope
from .linear_probe import UNWRAPPABLE_FIELDS, linears_by_output, peft_refused_linears

# Activation recipe per model_type (see lora_doctor.memory.activations); unknown types use "generic".
BLOCK_RECIPES: dict[str, str] = {
    "llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama", "deepseek": "llama",
    "mixtral": "moe", "qwen2_moe": "moe",
    "gemma": "gemma", "gemma2": "gemma",
    "phi3": "phi3",
    "gpt2": "gpt2",
    "opt": "opt",
    "bloom": "bloom",
    "falcon": "falcon",
    "bert": "bert",
    "whisper": "opt",   # the decoder: LayerNorm, plain GELU MLP (cross-attention: lora_doctor.memory.towers)
}

_LAYER_INDEX = re.compile(r"\.\d+(\.|$)")
_ADAPTER_PATH = re.compile(r"\.(lora_[A-Za-z_]+|modules_to_save|original_module)(\.|$)")


def build_meta_model(config: Any, *, auto_class: str | None = None, dtype: Any = None) -> Any:
    """Instantiate the transformers model for ``config`` on the meta device (no memory, no weights).

    ``dtype`` (default fp32) is the load dtype: like ``from_pretrained(dtype=...)`` it is the default
    dtype while the model is built, so floating buffers made at init (causal masks, decay tables) get it
    too, except those the model makes in an explicit dtype (rotary ``inv_freq`` stays fp32)."""
    import torch
    import transformers
    from accelerate import init_empty_weights

    name = auto_class or auto_class_for(config)
    cls = getattr(transformers, name)
    try:
        with init_empty_weights(include_buffers=True):
            model = cls.from_config(config, dtype=dtype or torch.float32, trust_remote_code=False)  # never prompts
    except Exception as exc:  # transformers raises anything from ValueError to ZeroDivisionError on odd configs
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        first = first if len(first) <= 200 else first[:200] + "..."
        raise UnsupportedModelError(
            f"cannot build model_type {getattr(config, 'model_type', '?')!r} with {name}: "
            f"{type(exc).__name__}: {first}"
        ) from None
    return model


_ENCODER_TYPES = ("bert", "roberta", "deberta", "deberta-v2", "electra", "distilbert", "xlm-roberta")


def auto_class_for(config: Any) -> str:
    """Causal LM for decoder models, masked LM for BERT-style encoders, seq2seq for encoder-decoders,
    image-text-to-text / speech-seq2seq for the multimodal layouts of lora_doctor.towers."""
    layout = layout_for(config)
    if layout is not None:
        return layout.auto_class
    if getattr(config, "is_encoder_decoder", False):
        return "AutoModelForSeq2SeqLM"
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "AutoModelForCausalLM"
    if config.model_type in _ENCODER_TYPES or any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in archs):
        return "AutoModelForMaskedLM"
    return "AutoModelForCausalLM"


def default_lora_targets(model_type: str) -> tuple[str, ...]:
    """The ``target_modules`` peft picks when none are given (peft's per-architecture table)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping

    return tuple(mapping.get(model_type, ()))


def _scope(path: str, head_path: str | None, is_encoder_decoder: bool, towers: tuple = ()) -> str:
    if head_path is not None and path == head_path:
        return "head"
    if towers:
        role = tower_scope(path, towers)
        if role is not None:
            return role
        if any(tag in path for tag in (".encoder_attn.", ".cross_attn.")):
            return "cross"   # cross-attention reads the tower's output: lora_doctor.memory.towers
    lowered = path.lower()
    if any(tag in lowered for tag in ("vision", "visual", "image_encoder", "vit.")):
        return "vision"
    if is_encoder_decoder and "encoder" in lowered:
        return "encoder"
    if _LAYER_INDEX.search(path):
        return "blocks"
    return "other"


def arch_from_model(model: Any, config: Any | None = None) -> ArchSpec:
    """Summarize a (meta or real) transformers model as an ArchSpec."""
    import torch.nn as nn
    from transformers.pytorch_utils import Conv1D

    config = config if config is not None else model.config
    text = _global_view(config.get_text_config() if hasattr(config, "get_text_config") else config)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_path = next((n for n, m in model.named_modules() if head is not None and m is head), None)
    enc_dec = bool(getattr(config, "is_encoder_decoder", False))
    towers = detect_towers(model, config)

    counted: set[int] = set()
    families: dict[tuple, dict] = {}
    embedding = head_params = expert = linear = other = 0
    adapter_params = 0
    for path, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if id(p) not in counted]
        if _ADAPTER_PATH.search(path):  # peft's lora_A / lora_B / modules_to_save copies: not the base model
            for p in own:
                counted.add(id(p))
            adapter_params += sum(p.numel() for p in own)
            continue
        path = path[: -len(".base_layer")] if path.endswith(".base_layer") else path  # peft-wrapped layer
        if isinstance(module, (nn.Linear, Conv1D)):
            weight = module.weight
            if isinstance(module, Conv1D):
                in_f, out_f = int(weight.shape[0]), int(weight.shape[1])
            else:  # in/out attributes, since a bitsandbytes 4-bit weight is stored packed
                in_f, out_f = int(module.in_features), int(module.out_features)
            tied = id(weight) in counted
            for p in own:
                counted.add(id(p))
            if tied and path == head_path:
                continue  # tied output head: its weight is the embedding, already counted
            scope = _scope(path, head_path, enc_dec, towers)
            quantizable = bnb_converts(module)
            key = (path.rsplit(".", 1)[-1], in_f, out_f, module.bias is not None, scope, quantizable)
            fam = families.setdefault(key, {"count": 0, "example": path,
                                            "class": "" if quantizable else type(module).__name__,
                                            "kind": "conv1d" if isinstance(module, Conv1D) else "linear"})
            fam["count"] += 1
            n = in_f * out_f + (out_f if module.bias is not None else 0)
            if tied:  # a block shared by several layers (Zamba's shared_transf): one weight, adapted per layer
                continue
            if scope == "head":
                head_params += n
            linear += n
        elif isinstance(module, nn.Embedding):
            for p in own:
                counted.add(id(p))
            embedding += sum(p.numel() for p in own)
        else:
            for p in own:
                counted.add(id(p))
                if p.dim() == 3 and "expert" in path.lower():  # Mamba's 3-D conv1d is not an expert
                    expert += p.numel()
                else:
                    other += p.numel()
    total = linear + embedding + expert + other
    num_heads = int(getattr(text, "num_attention_heads", 0) or getattr(text, "n_head", 0))
    hidden = int(getattr(text, "hidden_size", 0) or getattr(text, "n_embd", 0))
    kv = getattr(text, "num_key_value_heads", None)
    if kv is None:
        kv = 1 if getattr(text, "multi_query", False) and not getattr(text, "new_decoder_architecture", False) else num_heads
    head_dim = int(getattr(text, "head_dim", None) or getattr(text, "dim_head", None) or (hidden // max(num_heads, 1)))
    inter = int(_largest(getattr(text, "intermediate_size", None)) or getattr(text, "ffn_dim", None)
                or getattr(text, "dim_ff", None)
                or getattr(text, "n_inner", None) or 4 * hidden)
    spec = ArchSpec(
        model_type=config.model_type,
        architecture=type(model).__name__,
        total_params=int(total),
        linear_families=tuple(
            LinearFamily(name, in_f, out_f, v["count"], bias, v["kind"], scope, v["example"], quantizable, v["class"])
            for (name, in_f, out_f, bias, scope, quantizable), v in families.items()
        ),
        embedding_params=int(embedding),
        head_params=int(head_params),
        other_params=int(other),
        expert_params=int(expert),
        hidden_size=hidden,
        num_layers=int(getattr(text, layer_count_field(text), 0) or getattr(text, "n_layer", 0)),
        num_heads=num_heads,
        num_kv_heads=int(kv),
        head_dim=head_dim,
        intermediate_size=inter,
        vocab_size=int(text.vocab_size),
        tied_embeddings=head is not None and head_path is not None and head_params == 0 and head.weight is not None
        and any(head.weight is m.weight for m in model.modules() if isinstance(m, nn.Embedding)),
        block=BLOCK_RECIPES.get(config.model_type) or BLOCK_RECIPES.get(getattr(text, "model_type", ""), "generic"),
        default_targets=default_lora_targets(config.model_type),
        num_experts=int(getattr(text, "num_local_experts", 0) or getattr(text, "num_experts", 0) or 0),
        experts_per_token=int(getattr(text, "num_experts_per_tok", 0) or 0),
        extra=dict(_extra_fields(text), **_unwrappable_extra(model)),
        towers=towers,
        buffer_bytes=int(sum(b.numel() * b.element_size() for b in model.buffers())),
        load_dtype_buffer_params=load_dtype_buffer_params(model, config),
    )
    overrides = text_overrides(config)
    if overrides:
        extra = dict(spec.extra, max_position_embeddings=getattr(config, "max_target_positions", None) or spec.max_positions,
                     loss_in_logits_dtype=config.model_type in LOSS_IN_LOGITS_DTYPE)
        spec = replace(spec, **overrides, extra=extra)
    if not spec.towers and os.environ.get("LORA_DOCTOR_DERIVE", "1") != "0":  # trace-derived corrections on first plan
        from .memory.derive import derive_for_arch
        from .memory.layer_terms import attach_deriver

        attach_deriver(spec, derive_for_arch(config))
    return spec


def load_dtype_buffer_params(model: Any, config: Any) -> int:
    """Elements of ``model``'s fp32 buffers that a build in bf16 makes in bf16: the model creates them in the
    default dtype, so ``from_pretrained(dtype=...)`` loads them in the load dtype. RoPE's ``inv_freq`` is made
    in an explicit fp32 (transformers' rope init functions), so a model with no other floating buffer is not
    built again; 0 when the second build fails."""
    import torch

    fp32 = {n: b.numel() for n, b in model.named_buffers() if b.dtype == torch.float32}
    if all(n.endswith("inv_freq") for n in fp32):
        return 0
    try:
        other = build_meta_model(config, dtype=torch.bfloat16)
    except Exception:  # UnsupportedModelError: keep them at fp32
        return 0
    return int(sum(fp32[n] for n, b in other.named_buffers() if n in fp32 and b.dtype == torch.bfloat16))


class _GlobalView:
    """A heterogeneous config (``per_layer_config``: Gemma-4's global layers have their own head_dim)
    refuses to give one value for a per-layer field; this view gives the global one, without
    transformers' warning (the layers' own sizes are in the built model's linear families)."""

    def __init__(self, config: Any) -> None:
        self._config = config

    def __getattr__(self, name: str) -> Any:
        return self._config._getattr_without_heterogeneous_validation(name)


def _global_view(config: Any) -> Any:
    return _GlobalView(config) if getattr(config, "is_heterogeneous", False) else config


def _largest(value: Any) -> Any:
    """One size for a per-layer list (Gemma-3n's intermediate_size): the largest."""
    return max(value) if isinstance(value, (list, tuple)) and value else value


def bnb_converts(module: Any) -> bool:
    """Whether ``BitsAndBytesConfig(load_in_4bit=True)`` turns this layer into a 4-bit one.

    transformers' ``replace_with_bnb_linear`` converts ``isinstance(module, Conv1D) or type(module) is
    nn.Linear``: a subclass of nn.Linear (Falcon's ``FalconLinear``, Llama-4's and PhiMoE's routers,
    DeepSeek-V4's ``DeepseekV4GroupedLinear``) keeps its weight in the load dtype. A layer bitsandbytes
    already replaced (``Linear4bit`` / ``Linear8bitLt``, a loaded quantized model) counts as converted.
    """
    import torch.nn as nn
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, Conv1D) or type(module) is nn.Linear:
        return True
    return type(module).__module__.split(".", 1)[0] == "bitsandbytes"


# model type -> the config field counting its decoder layer modules, where ``num_hidden_layers`` counts
# something else (LongCat-Flash: two attention sublayers per decoder layer, ``num_hidden_layers = 2 * num_layers``)
LAYER_COUNT_FIELDS: dict[str, str] = {"longcat_flash": "num_layers"}


def layer_count_field(text: Any) -> str:
    """The config field holding the number of decoder layer modules (``num_hidden_layers`` for nearly all)."""
    return LAYER_COUNT_FIELDS.get(getattr(text, "model_type", ""), "num_hidden_layers")


# model type -> its config field holding the block of a blockwise linear attention (``block_size`` means other
# things elsewhere: Bark's context length, Muse-Glimmer's noise block)
LINEAR_ATTENTION_BLOCK: dict[str, str] = {"minimax": "block_size"}


def _unwrappable_extra(model: Any) -> dict[str, list[str]]:
    """The linear layers peft's LoRA cannot run (``non_tensor_linears``: a tuple output;
    ``reshaping_linears``: an output not ``[..., out_features]``) or refuses (``peft_refused_linears``),
    by their last path component; only the kinds the model has (:mod:`.linear_probe`)."""
    found = dict(linears_by_output(model), refused=peft_refused_linears(model))
    return {field: found[kind] for kind, field in UNWRAPPABLE_FIELDS.items() if found.get(kind)}


def _extra_fields(text: Any) -> dict:
    """Block details the activation recipes read (kept small and JSON-serializable)."""
    keys = ("hidden_act", "activation_function", "attention_dropout", "hidden_dropout", "attn_pdrop",
            "resid_pdrop", "embd_pdrop", "dropout", "attention_probs_dropout_prob", "hidden_dropout_prob",
            "parallel_attn", "new_decoder_architecture", "alibi", "sliding_window", "attention_chunk_size",
            "final_logit_softcapping", "attn_logit_softcapping", "word_embed_proj_dim", "do_layer_norm_before",
            "max_position_embeddings", "n_positions", "mamba_chunk_size", "chunk_size")
    out = {}
    for k in keys:
        v = getattr(text, k, None)
        if isinstance(v, (int, float, str, bool)):
            out[k] = v
    block = getattr(text, LINEAR_ATTENTION_BLOCK.get(getattr(text, "model_type", ""), ""), None)
    if isinstance(block, int):
        out["linear_attention_block"] = block
    from .memory.layer_terms import LINEAR_ATTENTION_CHUNK

    types = getattr(text, "layer_types", None) or getattr(text, "layers_block_type", None)
    if isinstance(types, (list, tuple)) and "linear_attention" in types:   # chunked delta rules (layer_terms)
        out["linear_attention_chunk"] = LINEAR_ATTENTION_CHUNK
    return out
