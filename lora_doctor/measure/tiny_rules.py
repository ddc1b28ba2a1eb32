"""Consistency rules for the tiny configs of :mod:`.tiny`: what else must change when a config's sizes
and layer count shrink, so that the config class's validators and its model's constructor accept it.

Each rule reads the full-size default config and edits the tiny fields:

- fields that count layers (``num_kv_shared_layers``, ``n_input_layers``) shrink with the layer count;
- a run-length layer pattern (GPT-Neo's ``attention_types``) covers the tiny layer count;
- Mamba-2's ``num_heads * head_dim == expand * hidden_size`` holds at the tiny width;
- a heterogeneous config's per-layer overrides (``per_layer_config``) keep their ratio to the global
  value at the tiny size, layer type for layer type;
- a layer pattern the class fixes at the full layer count (Zamba2's 54 ``layers_block_type``) shrinks to
  its runs, one layer each, so ``validate_layer_type`` (one entry per layer) holds;
- :data:`SHARED_BLOCKS`: hybrid layers that share one block keep two such layers;
- a choice the tiny table raises above the class's default (a top-k) returns to the default when the
  class's validators reject the tiny config (ZAYA: top-1 only);
- :data:`DEFAULT_GAPS`: values for config classes whose own defaults cannot build a model at all.
"""

from __future__ import annotations

import re
from typing import Any, Callable

LAYERS = 4
LAYER_FIELDS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_LAYER_COUNT = re.compile(r"^(num|n)_\w+_layers$")  # a number of layers of one kind (not the total)


def _repeat(pattern: tuple[str, ...]) -> Callable[[int], list[str]]:
    return lambda layers: [pattern[i % len(pattern)] for i in range(layers)]


# Config classes whose defaults cannot build their own model: the field their model needs, as the
# published checkpoint sets it (a function of the tiny layer count for per-layer lists).
DEFAULT_GAPS: dict[str, dict[str, Any]] = {
    # layer_types None, but Lfm2MoeDecoderLayer indexes it; LFM2-8B-A1B mixes short convs and attention
    "lfm2_moe": {"layer_types": _repeat(("conv", "conv", "full_attention", "conv"))},
    # the rotary embedding reads rope_parameters per layer type, the default is one flat dict
    "cohere_compass_text": {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 10000.0}}},
    # DbrxAttention reads attn_config.rope_theta, which DbrxAttentionConfig does not declare, and calls
    # clamp(min=-clip_qkv, max=clip_qkv), which raises with the default None (DBRX: 500000 and 8)
    "dbrx": {"attn_config": {"rope_theta": 500000.0, "clip_qkv": 8.0}},
    # validate_architecture: every layer type's num_key_value_heads equals num_attention_heads
    "dots3_note_text": {"num_key_value_heads": "num_attention_heads"},
}


# Model types whose hybrid layers share one block, tied to the first such layer's weights (Zamba's
# ``shared_transf``): the model cannot be built with a single hybrid layer, so the tiny pattern is the
# full pattern's runs shrunk to one layer each (two hybrid layers in four), in this declared field.
SHARED_BLOCKS: dict[str, str] = {"zamba": "layers_block_type"}


def consistent(default: Any, fields: dict[str, Any], tiny: dict[str, Any]) -> dict[str, Any]:
    """``fields`` with every rule applied; ``tiny`` is the field -> tiny value table."""
    fields = dict(fields)
    layers = next((fields[n] for n in LAYER_FIELDS if n in fields), LAYERS)
    full_layers = next((getattr(default, n) for n in LAYER_FIELDS if isinstance(getattr(default, n, None), int)), None)
    _layer_counts(default, fields, layers, full_layers)
    _run_length_pattern(default, fields, layers)
    _ssm_heads(default, fields)
    _fixed_pattern(default, fields, layers, full_layers)
    _pinned_choices(default, fields)
    for name, value in DEFAULT_GAPS.get(default.model_type, {}).items():
        if callable(value):
            value = value(layers)
        elif isinstance(value, str):  # the tiny value of another field
            value = fields[value]
        if isinstance(value, dict) and isinstance(fields.get(name), dict):  # a sub-config's fields
            value = {**fields[name], **value}
        fields[name] = value
    if _heterogeneous(default):
        fields["per_layer_config"] = per_layer_overrides(default, fields, tiny)
    return fields


def _layer_counts(default: Any, fields: dict[str, Any], layers: int, full_layers: int | None) -> None:
    """Fields counting layers of one kind keep their share of the layers (at least one if any)."""
    if not full_layers:
        return
    for name, value in vars(default).items():
        if (_LAYER_COUNT.match(name) and name not in LAYER_FIELDS and isinstance(value, int)
                and not isinstance(value, bool) and value > 0):
            fields[name] = max(1, round(value * layers / full_layers))


def _run_length_pattern(default: Any, fields: dict[str, Any], layers: int) -> None:
    """GPT-Neo's ``attention_types = [[["global", "local"], 12]]``: the pattern repeated over the tiny layers."""
    runs = getattr(default, "attention_types", None)
    if isinstance(runs, list) and runs and all(isinstance(r, (list, tuple)) and len(r) == 2 for r in runs):
        pattern = list(runs[0][0])
        if layers % len(pattern) == 0:
            fields["attention_types"] = [[pattern, layers // len(pattern)]]


def shrink_pattern(pattern: list[str], layers: int) -> list[str]:
    """The pattern's runs, one layer each, repeated over ``layers``: Zamba2's ``[mamba] * 6 + [hybrid] ...``
    becomes ``[mamba, hybrid, mamba, hybrid]``, so every kind of layer the full model has is traced."""
    runs = [kind for i, kind in enumerate(pattern) if i == 0 or kind != pattern[i - 1]]
    return [runs[i % len(runs)] for i in range(layers)]


def _fixed_pattern(default: Any, fields: dict[str, Any], layers: int, full_layers: int | None) -> None:
    """A per-layer pattern the class sets at full length whatever the layer count (Zamba2), or whose
    layers share one block (:data:`SHARED_BLOCKS`), shrinks to its runs (:func:`shrink_pattern`)."""
    if not full_layers:
        return
    shared = SHARED_BLOCKS.get(default.model_type)
    for name in [shared] if shared else sorted(_declared(default)):
        value = _global(default, name)
        if (name in fields or not isinstance(value, list) or len(value) != full_layers
                or not all(isinstance(v, str) for v in value)):
            continue
        if shared or len(_probe_list(default, name, layers) or ()) != layers:
            fields[name] = shrink_pattern(value, layers)


def _pinned_choices(default: Any, fields: dict[str, Any]) -> None:
    """When the class rejects the tiny config, a field the tiny table raised above the class's default
    (ZAYA's ``num_experts_per_tok`` 1 -> 2, which ``validate_architecture`` pins to 1) takes the default."""
    if _validates(fields):
        return
    for name, value in fields.items():
        full = _global(default, name)
        if (isinstance(value, int) and isinstance(full, int) and not isinstance(full, bool)
                and full < value and _validates({**fields, name: full})):
            fields[name] = full
            return


def _validates(fields: dict[str, Any]) -> bool:
    from transformers import AutoConfig

    try:
        AutoConfig.for_model(**fields)
    except Exception:
        return False
    return True


def _probe_list(default: Any, name: str, layers: int) -> Any:
    """``name`` as the class derives it for ``layers`` layers (nothing else changed), or None if it refuses."""
    from transformers import AutoConfig

    layers_field = next((n for n in LAYER_FIELDS if isinstance(getattr(default, n, None), int)), None)
    try:
        return _global(AutoConfig.for_model(default.model_type, **{layers_field: layers}), name)
    except Exception:
        return None


def _declared(config: Any) -> set[str]:
    import dataclasses

    try:
        return {f.name for f in dataclasses.fields(config)}
    except TypeError:
        return set()


def _ssm_heads(default: Any, fields: dict[str, Any]) -> None:
    """Mamba-2: the SSM heads tile the expanded width (``num_heads * head_dim == expand * hidden_size``)."""
    expand, hidden = getattr(default, "expand", None), fields.get("hidden_size")
    if isinstance(expand, int) and hidden and "num_heads" in fields and "head_dim" in fields:
        if getattr(default, "num_heads") * getattr(default, "head_dim") == expand * getattr(default, "hidden_size"):
            fields["num_heads"] = expand * hidden // fields["head_dim"]


def _heterogeneous(config: Any) -> bool:
    try:
        return bool(getattr(config, "is_heterogeneous", False))
    except Exception:
        return False


def _global(config: Any, name: str) -> Any:
    """The global value of a field a heterogeneous config also sets per layer."""
    getter = getattr(config, "_getattr_without_heterogeneous_validation", None)
    try:
        return getter(name, None) if getter else getattr(config, name, None)
    except Exception:
        return None


def per_layer_overrides(default: Any, fields: dict[str, Any], tiny: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The default's per-layer overrides for the tiny layers: tiny layer i takes the overrides of the
    first full-size layer of its layer type, each size scaled by (tiny global / full global)."""
    from transformers import AutoConfig

    full = {int(i): o for i, o in (default.to_dict().get("per_layer_config") or {}).items()}
    probe = AutoConfig.for_model(**fields)  # the tiny layer types (with the class's own full-size overrides)
    full_types = list(_global(default, "layer_types") or [])
    tiny_types = list(_global(probe, "layer_types") or [])
    out: dict[int, dict[str, Any]] = {}
    for i in range(len(tiny_types) or LAYERS):
        j = full_types.index(tiny_types[i]) if tiny_types and tiny_types[i] in full_types else i
        layer = {}
        for name, value in full.get(j, {}).items():
            glob, small = _global(default, name), fields.get(name, tiny.get(name))
            if isinstance(value, int) and isinstance(glob, int) and glob and isinstance(small, int):
                layer[name] = max(1, round(small * value / glob))
            else:
                layer[name] = value
        if layer:
            _mla_head_dim({**{n: _global(default, n) for n in _MLA}, **full.get(j, {})}, layer, fields)
            out[i] = layer
    return out


_MLA = ("head_dim", "qk_nope_head_dim", "qk_rope_head_dim")


def _mla_head_dim(full: dict[str, Any], layer: dict[str, Any], fields: dict[str, Any]) -> None:
    """Keep ``head_dim == qk_nope_head_dim + qk_rope_head_dim`` where the full-size layer has it."""
    if all(isinstance(full.get(n), int) for n in _MLA) and full["head_dim"] == full[_MLA[1]] + full[_MLA[2]]:
        layer["head_dim"] = sum(layer.get(n, fields.get(n, 0)) for n in _MLA[1:])
