"""Find the vision / audio towers and the projector of a (meta) multimodal model (needs torch).

The layout table is :data:`lora_doctor.towers.TOWER_LAYOUTS`; shapes are read from the real modules
(the first transformer block of each tower) so that config aliases (``embed_dim`` vs
``hidden_size``, ``depth`` vs ``num_hidden_layers``) cannot disagree with what is built.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import UnsupportedModelError
from .towers import TOWER_LAYOUTS, TowerLayout, TowerSpec

_BLOCK = re.compile(r"^((?:.*\.)?(?:layers|blocks|layer))\.(\d+)\.")
_GATED = ("gate_proj", "up_proj")
_MLP_IN = ("fc1", "gate_proj", "up_proj", "linear_fc1")   # the MLP's widening projection

# The language model of an encoder-decoder speech model is its decoder: ArchSpec's text fields.
TEXT_OVERRIDES: dict[str, dict[str, str]] = {
    "whisper": {"num_layers": "decoder_layers", "num_heads": "decoder_attention_heads",
                "num_kv_heads": "decoder_attention_heads", "intermediate_size": "decoder_ffn_dim",
                "hidden_size": "d_model"},
}


def layout_for(config: Any) -> TowerLayout | None:
    layout = TOWER_LAYOUTS.get(getattr(config, "model_type", ""))
    if layout is None or not layout.vision:
        return layout
    if getattr(config, layout.vision_config, None) is None:
        raise UnsupportedModelError(f"{config.model_type} config has no {layout.vision_config!r}: a vision-language "
                                    f"model needs it to build the vision tower; pass the model's full config.json")
    return layout


def check_fields(fields: dict) -> None:
    """A config.json of a vision-language model without its vision section: a clear error, not defaults.

    transformers fills a missing ``vision_config`` with its defaults (a CLIP-L for LLaVA), which would plan
    some other vision tower without a word.
    """
    layout = TOWER_LAYOUTS.get(str(fields.get("model_type", "")))
    if layout is not None and layout.vision and not fields.get(layout.vision_config):
        raise UnsupportedModelError(f"{fields['model_type']} config has no {layout.vision_config!r}: a vision-language "
                                    "model needs it to build the vision tower (transformers would silently use its "
                                    "defaults); pass the model's full config.json")


def _find(model: Any, attr: str) -> tuple[str, Any] | None:
    """The shallowest module whose last path component is ``attr``."""
    found = [(n, m) for n, m in model.named_modules() if n.rsplit(".", 1)[-1] == attr]
    return min(found, key=lambda nm: nm[0].count(".")) if found else None


def _params(module: Any, skip: Any = None) -> tuple[int, int]:
    import torch.nn as nn

    skip_ids = {id(p) for p in skip.parameters()} if skip is not None else set()
    total = sum(p.numel() for p in module.parameters() if id(p) not in skip_ids)
    linear = sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0) for m in module.modules()
                 if isinstance(m, nn.Linear) and id(m.weight) not in skip_ids)
    return int(total), int(linear)


def _block_shape(module: Any) -> dict:
    """Layers, hidden and intermediate width, norm and MLP kind, from the tower's first block."""
    import torch.nn as nn

    blocks: set[tuple[str, str]] = set()
    first: dict[str, nn.Linear] = {}
    first_prefix = None
    norm = "layer"
    for name, sub in module.named_modules():
        found = _BLOCK.match(name + ".")
        if not found:
            continue
        blocks.add((found.group(1), found.group(2)))
        first_prefix = first_prefix or found.group(1)
        if found.group(1) == first_prefix and found.group(2) == "0":
            if isinstance(sub, nn.Linear):
                first.setdefault(name.rsplit(".", 1)[-1], sub)
            if "rms" in type(sub).__name__.lower():
                norm = "rms"
    linears = [m for n, m in first.items() if isinstance(m, nn.Linear)]
    if not linears:
        return {"num_layers": len(blocks)}
    hidden = int(linears[0].in_features)
    widening = [int(first[n].out_features) for n in _MLP_IN if n in first]
    inter = widening[0] if widening else 4 * hidden
    return {"num_layers": len(blocks), "hidden_size": hidden, "intermediate_size": inter, "norm": norm,
            "mlp": "gated" if any(g in first for g in _GATED) else "plain"}


def _vision_fields(config: Any, layout: TowerLayout) -> dict:
    vc = getattr(config, layout.vision_config)
    image = getattr(vc, "image_size", 0) or 0
    patch = int(getattr(vc, "patch_size", 0) or 0)
    fields = {"num_heads": int(getattr(vc, "num_attention_heads", 0) or getattr(vc, "num_heads", 0) or 0),
              "hidden_act": str(getattr(vc, "hidden_act", "gelu")), "patch_size": patch,
              "image_size": int(image if isinstance(image, int) else max(image)),
              "merge_size": int(getattr(vc, "spatial_merge_size", 1) or 1)}
    tokens = getattr(config, "mm_tokens_per_image", None) or getattr(config, "image_seq_length", None)
    if tokens:
        fields["tokens_per_image"] = int(tokens)
    extra = {k: v for k in ("scale_factor", "vision_feature_select_strategy", "vision_feature_layer")
             if isinstance(v := getattr(config, k, None), (int, float, str))}
    extra.update({k: v for k in ("temporal_patch_size", "max_num_tiles", "window_size", "num_channels")
                  if isinstance(v := getattr(vc, k, None), (int, float, str))})
    fields["extra"] = extra
    return fields


def _audio_fields(config: Any) -> dict:
    return {"num_heads": int(config.encoder_attention_heads), "hidden_act": str(config.activation_function),
            "extra": {"num_mel_bins": int(config.num_mel_bins),
                      "max_source_positions": int(config.max_source_positions),
                      "conv_kernel": 3, "conv_stride": 2}}


def detect_towers(model: Any, config: Any) -> tuple[TowerSpec, ...]:
    """The towers of ``model`` per its layout; () for a text-only model."""
    layout = layout_for(config)
    if layout is None:
        return ()
    out: list[TowerSpec] = []
    if layout.vision:
        found = _find(model, layout.vision)
        if found is None:
            raise UnsupportedModelError(f"{config.model_type}: no {layout.vision!r} module in the built model")
        path, module = found
        inner = getattr(module, layout.inner_projector, None) if layout.inner_projector else None
        params, linear = _params(module, skip=inner)
        out.append(TowerSpec("vision", path, params, linear, **_block_shape(module), **_vision_fields(config, layout)))
        proj = (f"{path}.{layout.inner_projector}", inner) if inner is not None else \
            (_find(model, layout.projector) if layout.projector else None)
        if proj is not None:
            p_params, p_linear = _params(proj[1])
            out.append(TowerSpec("projector", proj[0], p_params, p_linear))
    if layout.audio:
        found = _find(model, layout.audio)
        if found is None:
            raise UnsupportedModelError(f"{config.model_type}: no {layout.audio!r} module in the built model")
        path, module = found
        params, linear = _params(module)
        out.append(TowerSpec("audio", path, params, linear, **_block_shape(module), **_audio_fields(config)))
    return tuple(out)


def tower_scope(path: str, towers: tuple[TowerSpec, ...]) -> str | None:
    """The role of the tower holding ``path`` (the projector wins over a vision tower containing it)."""
    best = None
    for t in towers:
        if path == t.path or path.startswith(t.path + "."):
            if best is None or len(t.path) > len(best.path):
                best = t
    return best.role if best else None


# Models whose own loss is ``CrossEntropyLoss()(logits, labels)`` in the logits' dtype (no fp32 upcast as in
# transformers' ForCausalLMLoss): the analytic engine reads ArchSpec.extra["loss_in_logits_dtype"].
LOSS_IN_LOGITS_DTYPE = frozenset({"whisper"})


def text_overrides(config: Any) -> dict[str, int]:
    """ArchSpec text fields that come from another config key for this model_type (Whisper's decoder)."""
    table = TEXT_OVERRIDES.get(getattr(config, "model_type", ""), {})
    out = {field: int(getattr(config, key)) for field, key in table.items()}
    if "hidden_size" in out and "num_heads" in out:
        out["head_dim"] = out["hidden_size"] // max(out["num_heads"], 1)
    return out
