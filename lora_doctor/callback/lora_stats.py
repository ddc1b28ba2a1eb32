"""What the model is (trainable parameters, LoRA scale, target coverage) and how its adapters move.

Works on a loaded ``nn.Module`` or ``PeftModel``; reads peft's ``LoraLayer`` attributes
(``lora_A`` / ``lora_B`` ``ModuleDict``s, ``scaling``, ``base_layer``) without importing peft.
Each batch of norms is one stacked tensor and one device-to-host copy (one GPU sync), so callers
decide when to pay for it (logging steps). Embedding adapters (``lora_embedding_A``) are not tracked.

Update-to-weight ratio: for one adapted linear ``W0 + s * B @ A`` the ratio is
``||s * B @ A||_F / ||W0||_F``, how far training has moved the layer. It is computed exactly without
forming ``B @ A``: ``||B @ A||_F^2 = sum((B^T B) * (A A^T))``, two ``r x r`` products.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..findings import Finding

_PREFIXES = ("base_model.model.", "module.")
_LINEAR_CLASS_NAMES = {"Conv1D"}            # transformers' GPT-2 style linear, not an nn.Linear
_NOT_TARGETS = {"lm_head"}                  # reported apart: adapting the head is unusual
_QUANT_PARAM_MODES = {"Params4bit": "qlora", "Int8Params": "qlora"}


def short_name(name: str) -> str:
    """``base_model.model.model.layers.0.self_attn.q_proj`` -> ``model.layers.0.self_attn.q_proj``."""
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


@dataclass
class Adapter:
    """One LoRA-adapted linear (its active adapter)."""

    name: str
    family: str
    a: torch.Tensor
    b: torch.Tensor
    scaling: float
    base_weight: Any = field(default=None, repr=False)


@dataclass
class ModelSummary:
    """What the pre-flight panel shows about the model itself."""

    mode: str                       # "full" | "lora" | "qlora"
    total_params: int
    trainable_params: int
    lora_scales: list[float]        # distinct effective scales alpha / r (alpha / sqrt(r) with rsLoRA)
    ranks: list[int]
    adapted_families: list[str]     # e.g. ["q_proj", "v_proj"]
    uncovered_families: list[str]   # linear families in the model without adapters
    adapted_linears: int
    total_linears: int

    @property
    def trainable_fraction(self) -> float:
        return self.trainable_params / self.total_params if self.total_params else 0.0


def _active(module: Any) -> str | None:
    names = getattr(module, "active_adapters", None) or getattr(module, "active_adapter", None)
    names = [names] if isinstance(names, str) else list(names or [])
    return next((n for n in names if n in module.lora_A), None)


def _is_lora_layer(module: Any) -> bool:
    return isinstance(getattr(module, "lora_A", None), torch.nn.ModuleDict) and len(module.lora_A) > 0


def _is_linear(module: Any) -> bool:
    return isinstance(module, torch.nn.Linear) or type(module).__name__ in _LINEAR_CLASS_NAMES


def find_adapters(model: torch.nn.Module) -> list[Adapter]:
    adapters = []
    for name, module in model.named_modules():
        if not _is_lora_layer(module):
            continue
        key = _active(module)
        if key is None:
            continue
        base = module.get_base_layer() if hasattr(module, "get_base_layer") else getattr(module, "base_layer", None)
        adapters.append(Adapter(
            short_name(name), name.rsplit(".", 1)[-1], module.lora_A[key].weight, module.lora_B[key].weight,
            float(module.scaling.get(key, 1.0)), getattr(base, "weight", None),
        ))
    return adapters


def param_count(p: torch.Tensor) -> int:
    """Logical element count: 4-bit packed parameters hold two values per byte."""
    state = getattr(p, "quant_state", None)
    shape = getattr(state, "shape", None)
    return int(math.prod(shape)) if shape is not None else p.numel()


def detect_mode(model: torch.nn.Module, adapters: list[Adapter]) -> str:
    quantized = any(type(p).__name__ in _QUANT_PARAM_MODES for p in model.parameters())
    quantized = quantized or bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))
    if adapters:
        return "qlora" if quantized else "lora"
    return "full"


def summarize(model: torch.nn.Module, adapters: list[Adapter] | None = None) -> ModelSummary:
    adapters = find_adapters(model) if adapters is None else adapters
    total = trainable = 0
    for p in model.parameters():
        n = param_count(p)
        total += n
        trainable += n if p.requires_grad else 0
    adapted_names = {a.name for a in adapters}
    families: dict[str, bool] = {}
    plain = 0
    lora_prefixes = tuple(f"{a}." for a in adapted_names)
    for name, module in model.named_modules():
        short = short_name(name)
        if not _is_linear(module) or short.startswith(lora_prefixes) or ".lora_" in short or ".modules_to_save." in short:
            continue
        family = short.rsplit(".", 1)[-1]
        if family in _NOT_TARGETS:
            continue
        plain += 1
        families.setdefault(family, False)
    for a in adapters:
        families[a.family] = True
    ranks = sorted({a.a.shape[0] for a in adapters})
    return ModelSummary(
        mode=detect_mode(model, adapters), total_params=total, trainable_params=trainable,
        lora_scales=sorted({round(a.scaling, 4) for a in adapters}), ranks=ranks,
        adapted_families=[f for f, on in families.items() if on],
        uncovered_families=[f for f, on in families.items() if not on],
        adapted_linears=len(adapters), total_linears=plain + len(adapters),
    )


def is_sharded(t: Any) -> bool:
    """A DTensor (FSDP2), a view into an FSDP1 flat parameter, or a DeepSpeed ZeRO-3 partitioned parameter
    (``ds_tensor``; its ``.data`` is empty between gathers): it holds this rank's shard only."""
    return (callable(getattr(t, "to_local", None)) or bool(getattr(t, "_fsdp_flattened", False))
            or hasattr(t, "ds_tensor"))


def sharded_adapters(adapters: list[Adapter]) -> bool:
    return any(is_sharded(a.a) or is_sharded(a.b) for a in adapters)


SHARDED_SKIP = Finding(
    "adapter-checks-sharded", "info",
    "the adapter weights are sharded across ranks (FSDP DTensor or flat parameters, DeepSpeed ZeRO-3), so the "
    "checks that need whole lora_A / lora_B tensors are skipped: both-zero initialization, dead adapters, "
    "update-to-weight ratio; the gradient, loss and memory checks still run",
    "to run them, train a few steps on one GPU or under DDP (torchrun without FSDP or ZeRO-3) with the same config",
    {},
)


def _to_host(values: list[torch.Tensor]) -> list[float]:
    """One stack and one copy to the host (the only GPU sync here)."""
    if not values:
        return []
    device = values[0].device
    return torch.stack([v.to(device, torch.float32) for v in values]).cpu().tolist()


@torch.no_grad()
def adapter_norms(adapters: list[Adapter]) -> tuple[list[float], list[float]]:
    """Frobenius norms of every ``lora_A`` and every ``lora_B`` (one sync)."""
    norms = _to_host([t.detach().float().norm() for a in adapters for t in (a.a, a.b)])
    return norms[0::2], norms[1::2]


@torch.no_grad()
def delta_norms(adapters: list[Adapter]) -> list[float]:
    """``||scaling * B @ A||_F`` per adapter, via ``sum((B^T B) * (A A^T))`` (one sync)."""
    out = []
    for ad in adapters:
        a, b = ad.a.detach().float(), ad.b.detach().float()
        sq = ((b.T @ b) * (a @ a.T)).sum().clamp_min(0)
        out.append(ad.scaling * sq.sqrt())
    return _to_host(out)


def _dequantized(weight: Any) -> torch.Tensor | None:
    if type(weight).__name__ == "Params4bit" and getattr(weight, "quant_state", None) is not None:
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(weight.data, weight.quant_state)
    if type(weight).__name__ in _QUANT_PARAM_MODES:
        return None   # int8 weights: skip rather than guess
    return weight


@torch.no_grad()
def base_norms(adapters: list[Adapter]) -> list[float | None]:
    """``||W0||_F`` per adapted layer (4-bit weights are dequantized one at a time); None if unknown."""
    norms: list[Any] = []
    for ad in adapters:
        w = _dequantized(ad.base_weight) if ad.base_weight is not None else None
        norms.append(w.detach().float().norm() if w is not None and w.device.type != "meta" else None)
    known = [n for n in norms if n is not None]
    values = iter(_to_host(known))
    return [next(values) if n is not None else None for n in norms]


def init_findings(adapters: list[Adapter]) -> list[Finding]:
    """Adapters that cannot learn before the first step: A and B both zero, or frozen."""
    findings = []
    sharded = sharded_adapters(adapters)
    a_norms, b_norms = ([], []) if sharded else adapter_norms(adapters)
    if sharded:
        findings.append(SHARDED_SKIP)
    both_zero = [ad.name for ad, na, nb in zip(adapters, a_norms, b_norms) if na == 0 and nb == 0]
    if both_zero:
        findings.append(Finding(
            "init-both-zero", "error",
            f"{len(both_zero)} of {len(adapters)} adapters have lora_A and lora_B both zero (e.g. {both_zero[0]}): "
            "the gradient of A contains B and the gradient of B contains A, so neither ever moves",
            "initialize lora_A randomly (peft's default init_lora_weights=True); if you loaded adapter "
            "weights, check the checkpoint",
            {"modules": both_zero[:20], "count": len(both_zero)},
        ))
    frozen = [ad.name for ad in adapters if not (ad.a.requires_grad or ad.b.requires_grad)]
    if frozen:
        findings.append(Finding(
            "adapter-frozen", "warning",
            f"{len(frozen)} of {len(adapters)} adapters are frozen (requires_grad=False), e.g. {frozen[0]}",
            "load the adapter with is_trainable=True (PeftModel.from_pretrained) or call model.train()",
            {"modules": frozen[:20], "count": len(frozen)},
        ))
    return findings


def dead_adapter_finding(adapters: list[Adapter], b_norms: list[float], step: int) -> Finding | None:
    dead = [ad.name for ad, nb in zip(adapters, b_norms) if nb == 0 and ad.b.requires_grad]
    if not dead:
        return None
    return Finding(
        "adapters-dead", "warning",
        f"{len(dead)} of {len(adapters)} adapters still have lora_B == 0 after {step} optimizer steps "
        f"(e.g. {dead[0]}): they have not learned anything",
        "check that lora_A is not zero, the learning rate is not 0, and with gradient checkpointing and "
        "frozen embeddings call model.enable_input_require_grads() or use use_reentrant=False",
        {"step": step, "modules": dead[:20], "count": len(dead)},
    )


def delta_ratio_finding(names: list[str], ratios: list[float | None], step: int, limit: float) -> Finding | None:
    known = [(r, n) for n, r in zip(names, ratios) if r is not None and math.isfinite(r)]
    over = sorted(((r, n) for r, n in known if r > limit), reverse=True)
    if not over:
        return None
    ratio, name = over[0]
    return Finding(
        "update-ratio-high", "warning",
        f"at step {step} the adapter of {name} has moved the layer by {ratio:.2f}x its base weight norm "
        f"(||s*B@A|| / ||W0||; {len(over)} layers above {limit:g}): training is rewriting the layer, not adapting it",
        "lower the learning rate or lora_alpha; typical ratios stay well below 0.1",
        {"step": step, "max_ratio": ratio, "module": name, "count": len(over)},
    )
