"""Effective LoRA scale and the rank / dropout / bias advice.

peft scales the adapter output by ``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with rsLoRA, Kalajdzievski
2023), per module when ``rank_pattern`` / ``alpha_pattern`` apply: a key matches a module name ending in
``"." + key`` (regex, ``peft.utils.other.get_pattern_key``). The thresholds are rules of thumb: a scale of 2
(alpha = 2r) is the common choice, 8 (alpha 128 with r 16) reliably diverges at usual learning rates.
"""

from __future__ import annotations

import math
import re

from ..findings import Finding
from .registry import finding
from .settings import LoraSettings

# (threshold, code, strict): checked from the top, first hit wins; 8 or more is an error, above 4 a warning
SCALE_LEVELS = ((8.0, "scale-extreme", False), (4.0, "scale-high", True))
SCALE_LOW = 0.25
RANK_HIGH = 64
# dropout above the key -> severity
DROPOUT_LEVELS = ((0.3, "warning"), (0.1, "info"))
BIAS_SEVERITY = {"all": "warning", "lora_only": "info"}


def _pattern_key(keys: list[str], name: str) -> str | None:
    return next((k for k in keys if re.match(rf"(.*\.)?({k})$", name)), None)


def effective_scale(r: int, alpha: float, use_rslora: bool) -> float:
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def module_scales(s: LoraSettings, modules: list[str]) -> dict[str, tuple[int, float, float]]:
    """name -> (r, alpha, scale) for each adapted module."""
    out = {}
    ranks, alphas = list(s.rank_pattern or {}), list(s.alpha_pattern or {})
    for name in modules:
        rk, ak = _pattern_key(ranks, name), _pattern_key(alphas, name)
        r = int(s.rank_pattern[rk]) if rk else s.r
        alpha = float(s.alpha_pattern[ak]) if ak else float(s.lora_alpha)
        out[name] = (r, alpha, effective_scale(r, alpha, s.use_rslora))
    return out


def scale_summary(s: LoraSettings, modules: list[str]) -> dict:
    scales = module_scales(s, modules) if (s.rank_pattern or s.alpha_pattern) else {}
    values = [v[2] for v in scales.values()] or [effective_scale(s.r, s.lora_alpha, s.use_rslora)]
    return {"scale": effective_scale(s.r, s.lora_alpha, s.use_rslora), "min": min(values), "max": max(values),
            "formula": "lora_alpha / sqrt(r)" if s.use_rslora else "lora_alpha / r"}


def _level(scale: float) -> str | None:
    return next((code for threshold, code, strict in SCALE_LEVELS if (scale > threshold if strict else scale >= threshold)), None)


def check_scale(s: LoraSettings, modules: list[str]) -> list[Finding]:
    default = (s.r, float(s.lora_alpha), effective_scale(s.r, s.lora_alpha, s.use_rslora))
    per = (module_scales(s, modules) if (s.rank_pattern or s.alpha_pattern) else {}) or {"*": default}
    formula = "lora_alpha / sqrt(r)" if s.use_rslora else "lora_alpha / r"
    grouped: dict[str, dict] = {}
    for name, values in per.items():
        code = _level(values[2])
        if code:
            grouped.setdefault(code, {})[name] = values
    out = []
    for code, hit in grouped.items():
        name, (r, alpha, scale) = max(hit.items(), key=lambda kv: kv[1][2])
        where = "" if name == "*" else f" on {len(hit)} module(s), e.g. {name}"
        shown_r = f"sqrt({r})" if s.use_rslora else str(r)
        target_alpha = 2 * math.sqrt(r) if s.use_rslora else 2 * r
        out.append(finding(code, f"effective scale {formula} = {alpha:g} / {shown_r} = {scale:.2f}{where}; updates "
                           f"this large make training unstable or diverge (alpha 128 with r 16 is x8).",
                           f"Lower lora_alpha to about {target_alpha:g} (scale 2) for r={r}, or lower the learning rate.",
                           scale=scale, r=r, lora_alpha=alpha, modules=[n for n in hit if n != "*"]))
    lowest = min(per.values(), key=lambda v: v[2])
    if lowest[2] < SCALE_LOW:
        out.append(finding("scale-low", f"effective scale {formula} = {lowest[2]:.3f}: the adapter's contribution is "
                           "tiny and it learns slowly (a very small alpha for a large r).",
                           "Raise lora_alpha (alpha = 2r gives scale 2), or use use_rslora=True for large ranks.",
                           scale=lowest[2]))
    return out


def check_capacity(s: LoraSettings, num_examples: int | None = None) -> list[Finding]:
    out = []
    ranks = {s.r, *[int(v) for v in (s.rank_pattern or {}).values()]}
    if 1 in ranks:
        out.append(finding("rank-one", "r = 1 gives each adapted layer a single direction to learn in; it underfits "
                           "almost every task.", "Use r = 8 to 16 (r = 4 at the least).", r=1))
    high = max(ranks)
    if high >= RANK_HIGH:
        small = num_examples is not None and num_examples < 10_000
        data = f" for {num_examples} examples" if num_examples is not None else ""
        out.append(finding("rank-high", f"r = {high}{data}: many adapter parameters, which tend to overfit small "
                           "datasets and cost memory without a quality gain.",
                           "Start from r = 16 and raise it only if the evaluation loss says so"
                           f"{'; use_rslora=True keeps the scale stable at high rank' if not s.use_rslora else ''}.",
                           severity="warning" if small else "info", r=high, num_examples=num_examples))
    for threshold, severity in DROPOUT_LEVELS:
        if s.lora_dropout > threshold:
            out.append(finding("dropout-high", f"lora_dropout = {s.lora_dropout:g}: above 0.1 the adapters learn "
                               "noticeably slower, and short fine-tunes rarely overfit enough to need it.",
                               "Use lora_dropout = 0.05 to 0.1 (0 for short runs).", severity=severity,
                               lora_dropout=s.lora_dropout))
            break
    if s.bias in BIAS_SEVERITY:
        out.append(finding("bias-trainable", f"bias={s.bias!r} makes {'every' if s.bias == 'all' else 'the adapted layers'} "
                           "bias of the base model trainable: they are saved with the adapter, the base model's output "
                           "changes even with the adapter disabled, and several adapters on one base conflict.",
                           "Use bias='none' unless you need trainable biases.", severity=BIAS_SEVERITY[s.bias],
                           bias=s.bias))
    return out
