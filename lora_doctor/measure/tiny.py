"""Tiny configs for every decoder-only text model type transformers can build: each config class's
defaults, scaled down (a few layers, narrow, small vocabulary), for the analytic-vs-trace sweep.

Only fields that the config class already has are overridden, so each model keeps its own block
structure (norms, activations, dropouts, layer patterns, MoE routing) at a size that traces fast.
"""

from __future__ import annotations

from typing import Any

from ..errors import UnsupportedModelError

# Field -> tiny value, applied when the default config has the field.
TINY_FIELDS: dict[str, Any] = {
    "hidden_size": 128, "n_embd": 128, "d_model": 128, "dim": 128,
    "num_attention_heads": 4, "n_head": 4, "num_heads": 4, "n_heads": 4,
    "num_key_value_heads": 2, "head_dim": 32, "kv_channels": 32,
    "intermediate_size": 256, "ffn_dim": 256, "n_inner": 256, "ffn_hidden_size": 256,
    "moe_intermediate_size": 64, "shared_expert_intermediate_size": 128, "expert_intermediate_size": 64,
    "num_local_experts": 4, "num_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2, "zero_expert_num": 2,
    "moe_topk": 2, "top_k": 2, "n_group": 1, "topk_group": 1,
    "q_lora_rank": 64, "kv_lora_rank": 32, "qk_rope_head_dim": 16, "qk_nope_head_dim": 16, "v_head_dim": 32,
    "vocab_size": 1024, "sliding_window": 128, "attention_chunk_size": 128, "rotary_dim": 16,
}
# Field -> the field whose value makes the model need it, for defaults that leave it None although every
# published config sets it (DeepSeek-V2's routed experts with ``num_experts_per_tok=None`` cannot route).
REQUIRED_WITH: dict[str, str] = {"num_experts_per_tok": "n_routed_experts"}
LAYERS = 4
# Not decoder-only text models even though transformers maps them to a *ForCausalLM class.
ENCODER_TYPES = frozenset({
    "bert", "bert-generation", "big_bird", "camembert", "data2vec-text", "electra", "ernie", "megatron-bert",
    "rembert", "roberta", "roberta-prelayernorm", "roc_bert", "roformer", "xlm-roberta", "xlm-roberta-xl",
    "xmod", "xlnet", "reformer", "prophetnet", "xlm", "trocr", "git", "fuyu", "moshi", "musicgen",
    "musicgen_melody", "whisper", "marian", "mbart", "bart", "blenderbot", "blenderbot-small", "pegasus",
    "plbart", "mvp", "bigbird_pegasus", "cpmant",
})


def _value(config: Any, name: str) -> Any:
    """``config.name``, or None when the config has no such field (or refuses to give one value)."""
    try:
        return getattr(config, name, None)
    except Exception:  # transformers' heterogeneous configs raise for per-layer fields
        return None


def causal_lm_types() -> list[str]:
    """Model types with a ``*ForCausalLM`` class in the installed transformers."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def tiny_config(model_type: str) -> dict[str, Any] | None:
    """A dict config (``model_type`` + the overridden fields) for a tiny decoder-only text model,
    or None when the type is not one (encoder, encoder-decoder, multimodal wrapper)."""
    from transformers import AutoConfig

    if model_type in ENCODER_TYPES:
        return None
    try:
        default = AutoConfig.for_model(model_type)
    except Exception:
        return None
    if getattr(default, "is_encoder_decoder", False) or getattr(default, "sub_configs", None):
        return None
    if _value(default, "is_heterogeneous"):
        raise UnsupportedModelError(f"{model_type}: a heterogeneous config (per_layer_config overrides sizes per "
                                    "layer); a tiny config of top-level fields cannot shrink it")
    fields: dict[str, Any] = {"model_type": model_type}
    for name, value in TINY_FIELDS.items():
        settable = not isinstance(getattr(type(default), name, None), property)  # Falcon's head_dim
        if settable and _value(default, name) is not None:
            fields[name] = value
    for name, needed_by in REQUIRED_WITH.items():
        if name not in fields and _value(default, needed_by) is not None:
            fields[name] = TINY_FIELDS[name]
    if "qk_rope_head_dim" in fields and "head_dim" in fields:  # MLA: rope runs on head_dim = the rope part
        fields["head_dim"] = fields["qk_rope_head_dim"]
    if "kv_lora_rank" in fields and "num_key_value_heads" in fields:  # MLA expands the latent to every head
        fields["num_key_value_heads"] = fields["num_attention_heads"]
    layers_field = next((n for n in ("num_hidden_layers", "n_layer", "num_layers") if hasattr(default, n)), None)
    if layers_field:
        fields[layers_field] = LAYERS
    for token in ("pad_token_id", "bos_token_id", "eos_token_id"):  # ids of the full vocabulary
        value = getattr(default, token, None)
        if isinstance(value, int) and value >= TINY_FIELDS["vocab_size"]:
            fields[token] = 0
        elif isinstance(value, (list, tuple)) and any(isinstance(v, int) and v >= TINY_FIELDS["vocab_size"] for v in value):
            fields[token] = 0
    return {k: v for k, v in fields.items() if v is not None}
