"""The window of layers :mod:`lora_doctor.memory.derive` traces: layer kinds, and the fewest leading layers
that contain every kind past layer 0 (or the whole model when the decoder layers are not one list)."""

from __future__ import annotations

import copy
import re
from typing import Any


def layer_kinds(model: Any, num_layers: int) -> list[int]:
    """Kind of each decoder layer: layers with the same modules, shapes and layer type share one."""
    layers = _layer_list(model, num_layers)
    if layers is None:
        return [0] * max(num_layers, 1)
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    types = getattr(text, "layer_types", None)
    seen: dict[tuple, int] = {}
    kinds = []
    for i, layer in enumerate(layers):
        sig = tuple((name, type(m).__name__, tuple(tuple(p.shape) for p in m.parameters(recurse=False)))
                    for name, m in layer.named_modules())
        if isinstance(types, (list, tuple)) and i < len(types):
            sig += (str(types[i]),)
        kinds.append(seen.setdefault(sig, len(seen)))
    return kinds


def _layer_list(model: Any, num_layers: int) -> Any:
    import torch.nn as nn

    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) == num_layers and num_layers > 0]
    return found[0][1] if found else None


def _window_size(kinds: list[int]) -> int:
    """Fewest leading layers in which every kind (past layer 0) appears at an index >= 1."""
    if len(kinds) <= 2:
        return len(kinds)
    need = 2
    for k in set(kinds):
        later = [i for i, kk in enumerate(kinds) if kk == k and i >= 1]
        if later:
            need = max(need, later[0] + 1)
    return need


# config fields that count the decoder layers besides ``layer_count_field`` (xLSTM: ``num_blocks``, copied from
# ``num_hidden_layers`` when the config is made, and what the model reads)
_COUNT_ALIAS = re.compile(r"^(num|n)_(\w+_)?(layers|blocks)$")


def _window_resolved(config: Any, kinds: list[int], whole: bool = False) -> Any:
    """A ResolvedModel of the first ``n`` layers (lists of per-layer values cut to ``n``).

    ``whole``: the decoder layers are not one list of ``num_layers`` (HRM's two stacks, looped several times per
    forward, some loops without gradients): cutting ``num_hidden_layers`` would not cut the model, so the whole
    model is traced and everything it saves is attributed outside the layers (the per-layer recipe cancels)."""
    from ..introspect import arch_from_model, build_meta_model, layer_count_field
    from ..models import ResolvedModel

    full = len(kinds)
    n = full if whole else _window_size(kinds)
    cfg = copy.deepcopy(config)
    if n < full:
        text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        for name, value in list(vars(text).items()):
            if isinstance(value, (list, tuple)) and len(value) == full and name != "architectures":
                setattr(text, name, type(value)(value[:n]))
        setattr(text, layer_count_field(text), n)
        for name, value in list(vars(text).items()):   # an alias of the count (xLSTM's num_blocks)
            if type(value) is int and value == full and _COUNT_ALIAS.match(name):
                setattr(text, name, n)
        try:
            model = build_meta_model(cfg)
            ok = _layer_list(model, n) is not None and layer_kinds(model, n) == _renumber(kinds[:n])
        except Exception:
            ok = False
        if not ok:  # the pattern did not survive the cut: trace every layer
            cfg, n = copy.deepcopy(config), full
    model = build_meta_model(cfg)
    return ResolvedModel(getattr(cfg, "_name_or_path", "") or cfg.model_type, "config",
                         arch_from_model(model, cfg), _config=cfg)


def _renumber(kinds: list[int]) -> list[int]:
    seen: dict[int, int] = {}
    return [seen.setdefault(k, len(seen)) for k in kinds]
