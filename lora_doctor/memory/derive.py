"""Derive the per-layer-kind corrections of :mod:`.layer_terms` from traces of the real model code.

For one setting class, the model is rebuilt with just enough layers to contain every layer kind
past the first layer (a *window*: 2 layers for uniform models, the first pattern period for
sliding/global alternations or dense/MoE mixes; :mod:`.window`), at full width, and one forward and backward pass is
traced on fake tensors (:mod:`lora_doctor.trace`) at four shapes: (batch, seq) = (1, S), (2, S), (1, 2S),
(2, 2S), with S below the sliding window, and again above it when the model has one; plus a fifth
shape that checks the backward moments (:func:`.moments.check_shape`), and a sixth only where some region or
pass fits no four-coefficient term (:func:`.moments.sixth_shape`: CPM-Ant's layers run at the input's length
plus its 32 prompt tokens, which needs all five coefficients, checked there).
Everything alive when backward starts is what autograd saved; each storage is attributed to the
region whose module created it (layer ``i``, outside the layers, or the logits). Solving the four
shapes for ``a * tokens + q * tokens * seq + e * seq + c`` per region, and subtracting the whole model's
recipe (:func:`lora_doctor.memory.analytic.recipe_regions`), gives the residual the engine adds.
What each layer's backward adds on top, and what each layer's forward holds beyond the layers before
it, are kept per layer kind as their undominated moments (:mod:`.moments`).

Imports torch; :func:`derive_terms` is what ``scripts/build_catalog.py`` stores as
``ArchSpec.derived`` so that planning a catalog model stays torch-free.
"""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from typing import Any, Iterable

from ..arch import ArchSpec
from ..plan_types import PlanSettings
from . import layer_terms
from .analytic import recipe_regions
from .moments import (Curve, backward_terms, check_shape, coefficients, fit as _fit, forward_terms, four_terms_miss,
                      sixth_shape, unchecked_peak)
from .targets import FALLBACK_TARGETS
from .window import _layer_list, _renumber, _window_resolved, _window_size, layer_kinds  # noqa: F401 - re-exported

# S of the traced shapes (batch, seq): (1, S), (2, S), (1, 2S), (2, 2S). At 64, a per-token fp32 scalar
# (LayerNorm's mean and rstd) at (1, S) is 256 bytes, rounded to 512, and the fit read the rounding as a
# quadratic term (GPT-2 QLoRA at batch 2, seq 1024: +16.5 MiB of activations, +3.1%); from 128 it is exact.
SEQ = 128
CHUNKED_SEQ = 256
PERSISTENT = ("weights", "adapters", "quantization_state", "optimizer_states",
              "paged_optimizer_states", "gradients", "inputs")
# Setting classes the catalog stores (coarse keys): what users run most. Each LoRA class is derived again for
# the CATALOG_PLACEMENTS beyond all-linear (keyed by layer_terms.class_key).
CATALOG_SETTINGS: tuple[PlanSettings, ...] = (
    PlanSettings(mode="lora", target_modules="all-linear"),
    PlanSettings(mode="qlora", target_modules="all-linear"),
    PlanSettings(mode="qlora", target_modules="all-linear", mixed_precision="bf16"),
    PlanSettings(mode="full"),
    PlanSettings(mode="full", dtype="fp32", mixed_precision="bf16"),
)


def attention_projections(arch: ArchSpec) -> tuple[str, ...] | None:
    """The attention block's linears as a target list (``q_proj,k_proj,v_proj,o_proj`` and their spellings)."""
    ids = tuple(sorted(layer_terms.family_id(f) for f in arch.linear_families
                       if f.scope != "head" and _ATTENTION.match(layer_terms.family_id(f))))
    return ids or None


def peft_default(arch: ArchSpec) -> tuple[str, ...] | str:
    """What ``target_modules=None`` adapts: peft's default for the model type, else all-linear (as ``plan``)."""
    return tuple(arch.default_targets) or FALLBACK_TARGETS


_ATTENTION = re.compile(r"^[^.]*(attn|attention)[^.]*\.")
# Where the adapters of each catalog LoRA class sit besides all-linear (None: nowhere new for this arch).
CATALOG_PLACEMENTS = (peft_default, attention_projections)


def catalog_settings(arch: ArchSpec, settings: Iterable[PlanSettings] = CATALOG_SETTINGS) -> list[PlanSettings]:
    """``settings``, then each LoRA setting again with the adapters of each of :data:`CATALOG_PLACEMENTS`
    (placements that coincide share one class: :func:`derive_terms` traces it once)."""
    out = list(settings)
    for place in CATALOG_PLACEMENTS:
        targets = place(arch)
        out += [replace(s, target_modules=targets) for s in settings if s.mode != "full" and targets is not None]
    return out


def derive_terms(model_or_config: Any, settings: Iterable[PlanSettings] | None = None, *,
                 device: str = "cuda", fine: bool = False, regime: bool | None = None,
                 keep: dict | None = None) -> dict:
    """``ArchSpec.derived`` for a config (PretrainedConfig, dict with model_type, or ResolvedModel).

    ``settings`` None: :func:`catalog_settings`. Classes whose trace fails are left out (the engine then uses the
    recipe alone for them). ``keep``: classes derived before (an ``ArchSpec.derived`` of this version), kept as
    they are and not traced again.
    """
    from ..models import ResolvedModel, resolve

    resolved = model_or_config if isinstance(model_or_config, ResolvedModel) else resolve(model_or_config)
    config = resolved.config()
    meta = resolved.meta_model()
    kinds = layer_kinds(meta, resolved.arch.num_layers)
    kept = (keep or {}).get("classes", {}) if (keep or {}).get("version") == layer_terms.VERSION else {}
    out: dict[str, Any] = {"version": layer_terms.VERSION, "layer_kinds": kinds, "classes": dict(kept)}
    window = _window_resolved(config, kinds, whole=_layer_list(meta, resolved.arch.num_layers) is None)
    regimes = (False, True) if _window_of(resolved.arch) else (False,)
    for s in catalog_settings(resolved.arch) if settings is None else settings:
        for long in regimes if regime is None else (regime,):
            key = layer_terms.fine_key(s, device, long) if fine else layer_terms.class_key(resolved.arch, s, device, long)
            if key in out["classes"]:   # kept, or peft's default adapts every linear (the all-linear class)
                continue
            try:
                out["classes"][key] = _residual(window, kinds, s, device, _seq_for(resolved.arch, long), resolved.arch)
            except Exception:  # third-party model code that cannot run on fake tensors: recipe only
                continue
    return out


def _window_of(arch: ArchSpec) -> int:
    return layer_terms.window_of(arch)


def _seq_for(arch: ArchSpec, long: bool) -> int:
    """S for a regime: all four shapes within the sliding window, or all beyond it. Without a window, for
    chunked mixers, whole chunks, at least two and at least :data:`CHUNKED_SEQ` tokens (Bamba's 256: at
    S = 128 the shapes' 128 and 256 both pad to one chunk, and the fit saw no growth with the sequence, -51%
    at seq 512; a single chunk at batch 1 skips ops that every longer input runs; the delta rules' loop
    over 64-token chunks backpropagates its first and last chunks apart: tiny Bailing-hybrid full -3.9% at
    S = 128, two chunks, -0.1% at 256)."""
    w = _window_of(arch)
    if not w:
        chunk = layer_terms.chunk_of(arch)
        return max(-(-max(SEQ, CHUNKED_SEQ) // chunk), 2) * chunk if chunk else SEQ
    return w + SEQ if long else max(min(SEQ, w // 2), 8)


_MEMO: dict[tuple[str, str], "dict | None"] = {}   # (config json, fine key) -> derived terms


def derive_for_arch(config: Any) -> layer_terms.Deriver:
    """A deriver for :func:`layer_terms.attach_deriver`: derives one exact class per call, memoized
    per process on the config's JSON (the same tiny config planned twice is traced once)."""
    config = copy.deepcopy(config)
    try:
        ident = config.to_json_string(use_diff=False)
    except Exception:  # an odd config that does not serialize: memoize per arch only
        ident = str(id(config))

    def derive(arch: ArchSpec, s: PlanSettings, device: str) -> dict | None:
        long = layer_terms.long_regime(arch, s.seq_len)
        key = (ident, layer_terms.fine_key(s, device, long))
        if key not in _MEMO:
            got = derive_terms(_resolved_for(config, arch), [s], device=device, fine=True, regime=long)
            _MEMO[key] = got if got["classes"] else None
        return _MEMO[key]

    return derive


def _resolved_for(config: Any, arch: ArchSpec) -> Any:
    from ..models import ResolvedModel

    return ResolvedModel(getattr(config, "_name_or_path", "") or arch.model_type, "config", arch,
                         _config=copy.deepcopy(config))


def _residual(window: Any, kinds: list[int], s: PlanSettings, device: str, seq: int,
              arch: ArchSpec | None = None) -> dict:
    """Trace the window at the five shapes, fit each region (:func:`.moments.fit`), subtract the recipe.

    The recipe subtracted is the whole model's (``arch``), as the engine adds it: its per-layer numbers are an
    average over all layers, and the window's average differs where the layer kinds differ in their linears
    (MiMo-V2-Flash: one full-attention layer with narrower k/v projections, then sliding ones; a window of 2
    has them half and half, the model 1 in 4)."""
    from .analytic import recipe_trainable

    arch = arch or window.arch

    n = window.arch.num_layers
    wkinds = _renumber(kinds[:n])
    check = check_shape(_window_of(window.arch), seq)
    shapes = ((1, seq), (2, seq), (1, 2 * seq), (2, 2 * seq), check)
    traced = replace(s, gradient_checkpointing=False)
    samples, trainable, excess, fwd = _saved_by_region(window, traced, shapes, device, n)
    sixth = sixth_shape(check)
    if sixth is not None and _four_terms_miss(samples, excess, fwd, seq, check):
        more, _, more_excess, more_fwd = _saved_by_region(window, traced, (sixth,), device, n)
        samples, excess, fwd = samples + more, excess + more_excess, fwd + more_fwd
    regions = {r for smp in samples for r in smp}   # the fifth shape checks the fits (moments.fit)
    solved = {r: _fit([smp.get(r, 0.0) for smp in samples], seq, check, exact=True) for r in regions}
    recipe = recipe_regions(arch, replace(s, batch_size=1, seq_len=seq), device)
    zero = layer_terms.ZERO
    to_model = {wk: k for wk, k in zip(wkinds, kinds[:n])}  # window kind ids -> the model's
    layers: dict[int, list] = {}
    for i in range(1, n):
        layers.setdefault(to_model[wkinds[i]], []).append(solved.get(f"layer{i}", zero))
    kind0 = kinds[0]
    layer0 = solved.get("layer0", zero)
    if not layers.get(kind0):  # layer 0's kind appears only there: it is that kind's sample
        layers[kind0] = [_sub(layer0, recipe["first"])]
    first = _sub(_sub(layer0, _mean(layers[kind0])), recipe["first"])
    residual_layers = [list(_sub(_mean(layers[k]), recipe["layer"])) if layers.get(k) else list(zero)
                       for k in range(max(kinds) + 1)]
    # trainable parameters beyond the recipe's linear families, per kind and outside the layers
    per_layer, outside = recipe_trainable(arch, s)
    by_layer: dict[int, list[float]] = {}
    for i in range(n):
        by_layer.setdefault(to_model[wkinds[i]], []).append(trainable.get(f"layer{i}", 0) - per_layer)
    extra = [sum(by_layer[k]) / len(by_layer[k]) if by_layer.get(k) else 0.0 for k in range(max(kinds) + 1)]
    extra.append(trainable.get("outside", 0) - outside)
    return {"layers": residual_layers, "first": list(first),
            "outside": list(_sub(solved.get("outside", zero), recipe["outside"])),
            "logits": list(_sub(solved.get("logits", zero), recipe["logits"])),
            "trainable": [0.0] * len(extra) if s.mode == "full" else extra,
            "backward": backward_terms(excess, trainable, seq, check, n, kinds, wkinds, to_model),
            "forward": forward_terms(fwd, seq, check, n, kinds, wkinds, to_model)}


def _four_terms_miss(samples: list[dict[str, float]], excess: list[dict[int, Curve]], fwd: list[dict[int, Curve]],
                     seq: int, check: tuple[int, int]) -> bool:
    """Whether some region, or the peak of some layer's forward or backward pass that its checked moments do
    not reach, fits no four-coefficient term at the five shapes (then a sixth shape checks five)."""
    regions = [[smp.get(r, 0.0) for smp in samples] for r in {r for smp in samples for r in smp}]
    if four_terms_miss(regions, seq, check):
        return True
    for per_shape in (excess, fwd):
        keys = set.intersection(*(set(p) for p in per_shape)) if per_shape else set()
        if any(unchecked_peak([p[k] for p in per_shape], seq, check) for k in keys):
            return True
    return False


def _sub(x: tuple, y: tuple) -> tuple[float, ...]:
    return tuple(float(i) - float(j) for i, j in zip(coefficients(x), coefficients(y)))


def _mean(terms: list) -> tuple[float, ...]:
    return tuple(sum(t[i] for t in terms) / len(terms) for i in range(5))


_LAYER_INDEX = re.compile(r"\.(\d+)(?:\.|$)")


def _region(path: str, prefix: str | None, num_layers: int) -> str:
    if prefix and (path + ".").startswith(prefix + "."):
        m = _LAYER_INDEX.match(path[len(prefix):])
        if m and int(m.group(1)) < num_layers:
            return f"layer{m.group(1)}"
    return "outside"


def _saved_by_region(resolved: Any, s: PlanSettings, shapes: tuple, device: str, num_layers: int
                     ) -> tuple[list[dict[str, float]], dict[str, int], list[dict[int, Curve]], list[dict[int, Curve]]]:
    """Per shape, bytes alive at the start of backward (saved for it) by region (layer<i>, outside,
    logits); trainable parameters by region; per shape, what each layer's backward adds beyond the
    saved bytes of layers ``<= i`` and outside the layers and the gradients made before it; and per shape,
    what each layer's forward holds beyond the saved bytes of layers ``< i`` and outside the layers (key
    ``num_layers``: the forward's tail, from the last layer's end to the loss, beyond all the layers)."""
    from ..trace.profile import saved_at_backward_start

    per_shape, layers_prefix, params = saved_at_backward_start(resolved, s, shapes, foreach=device == "cuda",
                                                                backward=True)
    trainable: dict[str, int] = {}
    for name, numel in params.items():
        region = _region(name, layers_prefix, num_layers)
        trainable[region] = trainable.get(region, 0) + numel
    samples, excess, forward = [], [], []
    for records, layer_backwards, layer_forwards in per_shape:
        out: dict[str, float] = {}
        for rec in records:
            if rec.category in PERSISTENT or rec.op == "register":
                continue
            region = "logits" if rec.category == "logits_and_loss" else _region(rec.module, layers_prefix, num_layers)
            out[region] = out.get(region, 0.0) + rec.nbytes
        samples.append(out)
        excess.append({lb.layer: ([v - lb.gradients - out.get("outside", 0.0)
                                   - sum(out.get(f"layer{j}", 0.0) for j in range(lb.layer + 1)) for v in lb.curve],
                                  lb.ops) for lb in layer_backwards})
        before = {lf.layer: out.get("outside", 0.0) + sum(out.get(f"layer{j}", 0.0) for j in range(lf.layer))
                  for lf in layer_forwards}
        forward.append({lf.layer: ([v - before[lf.layer] for v in lf.curve], lf.ops)
                        for lf in layer_forwards if lf.layer <= num_layers})   # num_layers: the tail
    return samples, trainable, excess, forward
