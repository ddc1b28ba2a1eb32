"""Tiny configs for every decoder-only text model type transformers can build: each config class's
defaults, scaled down (a few layers, narrow, small vocabulary), for the analytic-vs-trace sweep.

Only fields that the config class already has are overridden, so each model keeps its own block
structure (norms, activations, dropouts, layer patterns, MoE routing) at a size that traces fast.
Sizes a default leaves None are left None (the model derives them, or the feature is off), except
the ones in :data:`FILL_WHEN_NONE`, which some config classes leave None although their model
cannot be built without them. The consistency rules (layer counts, per-layer overrides, validators
that tie sizes together) are in :mod:`.tiny_rules`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .tiny_rules import LAYERS, LAYER_FIELDS, consistent

# Field -> tiny value, applied when the default config has the field.
TINY_FIELDS: dict[str, Any] = {
    "hidden_size": 128, "n_embd": 128, "d_model": 128, "dim": 128,
    "num_attention_heads": 4, "n_head": 4, "num_heads": 4, "n_heads": 4,
    "num_key_value_heads": 2, "kv_n_heads": 2, "head_dim": 32, "kv_channels": 32, "dim_head": 32,
    "intermediate_size": 256, "ffn_dim": 256, "n_inner": 256, "ffn_hidden_size": 256, "dim_ff": 256,
    "moe_intermediate_size": 64, "shared_expert_intermediate_size": 128, "expert_intermediate_size": 64,
    "num_local_experts": 4, "num_experts": 4, "n_routed_experts": 4, "moe_num_experts": 4,
    "zero_expert_num": 2,
    "num_experts_per_tok": 2, "moe_topk": 2, "moe_top_k": 2, "top_k": 2, "n_group": 1, "topk_group": 1,
    "q_lora_rank": 64, "kv_lora_rank": 32, "qk_rope_head_dim": 16, "qk_nope_head_dim": 16, "v_head_dim": 32,
    "indexer_n_heads": 4, "indexer_kv_heads": 1, "indexer_head_dim": 32, "indexer_budget": 128,
    "indexer_compress_ratio": 4,
    "vocab_size_per_layer_input": 1024, "hidden_size_per_layer_input": 32,
    "vocab_size": 1024, "sliding_window": 128, "attention_chunk_size": 128, "rotary_dim": 16,
}
# Set even where the class declares them None: their model needs a value (head_dim**-0.5, a top-k, a
# GQA ratio, Dots1's shared expert), and the tiny value is what the class would derive or a valid
# choice. Other fields stay None when None: there None means "derived" (n_inner = 4 * hidden) or
# "off" (sliding_window, q_lora_rank).
FILL_WHEN_NONE: dict[str, Any] = {
    **{name: TINY_FIELDS[name] for name in (
        "head_dim", "num_key_value_heads", "n_routed_experts", "num_experts_per_tok", "n_group", "topk_group",
        "indexer_n_heads", "indexer_kv_heads", "indexer_head_dim", "indexer_budget", "indexer_compress_ratio")},
    "n_shared_experts": 1,
}
# Encoders (and encoder-style models) that transformers also maps to a *ForCausalLM class, and models
# whose text decoder is not the whole model (speech, music, OCR): not decoder-only text models.
ENCODER_TYPES = frozenset({
    "bert", "bert-generation", "big_bird", "camembert", "data2vec-text", "electra", "ernie", "megatron-bert",
    "rembert", "roberta", "roberta-prelayernorm", "roc_bert", "roformer", "xlm-roberta", "xlm-roberta-xl",
    "xmod", "xlnet", "reformer", "prophetnet", "xlm", "trocr", "git", "fuyu", "moshi", "musicgen",
    "musicgen_melody", "whisper", "marian", "mbart", "bart", "blenderbot", "blenderbot-small", "pegasus",
    "plbart", "mvp", "bigbird_pegasus",
})


def _value(config: Any, name: str) -> Any:
    """``config.name``, or None when the config has no such field (or refuses to give one value)."""
    getter = getattr(config, "_getattr_without_heterogeneous_validation", None)  # per-layer fields: the global
    try:
        return getter(name, None) if getter else getattr(config, name, None)
    except Exception:
        return None


def declared_fields(config: Any) -> set[str]:
    """The fields the config class declares (its dataclass fields), whatever their default."""
    try:
        return {f.name for f in dataclasses.fields(config)}
    except TypeError:  # not a dataclass (older transformers): the class annotations
        return {n for klass in type(config).__mro__ for n in getattr(klass, "__annotations__", {})}


def causal_lm_types() -> list[str]:
    """Model types with a ``*ForCausalLM`` class in the installed transformers."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def is_decoder_only_text(model_type: str, config: Any) -> bool:
    """True unless the config is an encoder (-decoder) or wraps other models: a sub-config that is a
    model of its own (it has a ``model_type``, or is any AutoConfig) makes a multimodal or composite
    wrapper (Gemma-3, Llama-4, BLT); sub-configs without one are parts of one decoder (DBRX's
    ``attn_config``/``ffn_config``, MPT's ``attn_config``)."""
    if model_type in ENCODER_TYPES or getattr(config, "is_encoder_decoder", False):
        return False
    sub_configs = getattr(config, "sub_configs", None) or {}
    return not any(getattr(sub, "model_type", None) != "" for sub in sub_configs.values())


def tiny_fields(config: Any) -> dict[str, Any]:
    """The TINY_FIELDS this config (or sub-config part) has, settable ones only."""
    declared = declared_fields(config)
    fields = {}
    for name in {**TINY_FIELDS, **FILL_WHEN_NONE}:
        if isinstance(getattr(type(config), name, None), property):  # Falcon's head_dim
            continue
        if name in TINY_FIELDS and _value(config, name) is not None:
            fields[name] = TINY_FIELDS[name]
        elif name in FILL_WHEN_NONE and name in declared and _value(config, name) is None:
            fields[name] = FILL_WHEN_NONE[name]
    if "qk_rope_head_dim" in fields and "head_dim" in fields:  # MLA: rope runs on head_dim = the rope part
        fields["head_dim"] = fields["qk_rope_head_dim"]
    if "kv_lora_rank" in fields and "num_key_value_heads" in fields:  # MLA expands the latent to every head
        fields["num_key_value_heads"] = fields["num_attention_heads"]
    return fields


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
    if not is_decoder_only_text(model_type, default):
        return None
    fields: dict[str, Any] = {"model_type": model_type, **tiny_fields(default)}
    for part in getattr(default, "sub_configs", None) or {}:  # DBRX's attn_config / ffn_config
        sub = _value(default, part)
        if sub is not None and (sub_fields := tiny_fields(sub)):
            fields[part] = sub_fields
    layers_field = next((n for n in LAYER_FIELDS if n in declared_fields(default) or hasattr(default, n)), None)
    if layers_field:
        fields[layers_field] = LAYERS
    for token in ("pad_token_id", "bos_token_id", "eos_token_id"):  # ids of the full vocabulary
        value = getattr(default, token, None)
        if isinstance(value, int) and value >= TINY_FIELDS["vocab_size"]:
            fields[token] = 0
        elif isinstance(value, (list, tuple)) and any(isinstance(v, int) and v >= TINY_FIELDS["vocab_size"] for v in value):
            fields[token] = 0
    fields = consistent(default, fields, TINY_FIELDS)
    return {k: v for k, v in fields.items() if v is not None}
