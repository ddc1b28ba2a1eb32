"""The live checks, independent of the Trainer: probes in, findings and ``doctor/`` metrics out."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..findings import Finding
from .health import GRAD_NORM, GRAD_NORM_RULE, LOSS, LOSS_RULE, SpikeDetector, SpikeRule
from .lora_stats import (Adapter, adapter_norms, base_norms, dead_adapter_finding, delta_norms,
                         delta_ratio_finding, find_adapters, sharded_adapters, short_name)
from .probes import GradProbe, LossProbe

TOP_MODULES_IN_FINDING = 3


@dataclass(frozen=True)
class Thresholds:
    """Every threshold of the live checks; defaults are documented in docs/callback.md."""

    grad_norm: SpikeRule = GRAD_NORM_RULE   # robust spike rule for the pre-clip gradient norm
    loss: SpikeRule = LOSS_RULE             # robust spike rule for the training loss
    dead_adapter_steps: int = 20            # lora_B still zero after this many optimizer steps: dead
    max_update_ratio: float = 1.0           # ||s*B@A|| / ||W0|| above this: the adapter rewrites the layer
    plan_tolerance: float = 0.10            # measured vs planned peak, relative
    min_headroom: float = 0.05              # free fraction of GPU memory
    fp16_overflow_patience: int = 10        # consecutive non-finite grad norms fp16 loss scaling may skip


def module_of(param_name: str) -> str:
    """``...q_proj.lora_A.default.weight`` -> ``...q_proj``; ``...norm.weight`` -> ``...norm``."""
    head, sep, _ = param_name.partition(".lora_")
    return head if sep else param_name.rsplit(".", 1)[0]


@dataclass
class Latest:
    """The most recent judged values (status line and logs)."""

    step: int = 0
    loss: float | None = None
    loss_step: int = 0                      # the step ``loss`` belongs to
    grad_norm: float | None = None
    grad_norm_max: float | None = None      # largest since the last log
    grad_local: float | None = None         # this rank's own gradient norm (before any cross-rank reduction)
    top_module: str | None = None
    top_module_norm: float | None = None
    dead_adapters: int | None = None
    update_ratio_max: float | None = None
    update_ratio_median: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


def _with_local(found: Finding, own: float) -> Finding:
    """Add this rank's own value (before any cross-rank reduction) to a finding's data."""
    return dataclasses.replace(found, data={**found.data, "local_value": own})


class Monitor:
    """Owns the probes and detectors for one model."""

    def __init__(self, model: torch.nn.Module, thresholds: Thresholds, *, fp16_scaling: bool = False,
                 world_size: int = 1, loss_factor: float = 1.0) -> None:
        self.thresholds = thresholds
        self.adapters: list[Adapter] = find_adapters(model)
        named = [(short_name(n), p) for n, p in model.named_parameters() if p.requires_grad]
        self.modules = [module_of(n) for n, _ in named]
        self.params = [p for _, p in named]
        self.grad = GradProbe(named, after_backward=world_size > 1)
        # the Trainer multiplies a summed (num_items_in_batch) loss by the world size when it averages tokens
        # across devices; the model's own loss is then 1/world of what the Trainer counts
        self.loss_factor = loss_factor
        self.loss = LossProbe()
        patience = thresholds.fp16_overflow_patience if fp16_scaling else 0
        self.grad_detector = SpikeDetector(GRAD_NORM, thresholds.grad_norm, nonfinite_patience=patience)
        self.loss_detector = SpikeDetector(LOSS, thresholds.loss)
        self.latest = Latest()
        self._base_norms: list[float | None] | None = None
        self._dead_checked = False
        self._probe_steps = 0

    def refresh_adapters(self, model: torch.nn.Module) -> None:
        """Re-read the adapters after the base layers were replaced (in-place 4-bit conversion)."""
        self.adapters = find_adapters(model)
        self._base_norms = None

    def attach(self, model: torch.nn.Module, *, gradients: bool = True) -> None:
        """``gradients=False``: no gradient hooks (DeepSpeed owns the gradients); the logged norm is judged."""
        if gradients:
            self.grad.attach()
        self.loss.attach(model)

    def detach(self) -> None:
        self.grad.detach()
        self.loss.detach()

    @property
    def probe_errors(self) -> list[BaseException]:
        return self.grad.errors + self.loss.errors

    def end_step(self, step: int, scale: torch.Tensor | None = None) -> None:
        self.grad.end_step(step, scale)
        self.loss.end_step(step)

    def judge(self) -> list[Finding]:
        """Copy the buffered per-step values to the host (one sync) and judge them in step order."""
        findings: list[Finding] = []
        grads, losses = self.grad.drain(), self.loss.drain()
        for step, norms, own in grads:
            self._probe_steps += 1
            self.latest.grad_local = own
            # a shard's per-parameter norms do not rank modules across the whole model
            found = self.observe_grad_norm(step, math.sqrt(sum(v * v for v in norms)),
                                           None if self.grad.sharded else norms)
            findings += [_with_local(found, own)] if found else []
        # the forward hook sees the model's loss before the Trainer's ``loss *= world_size``; the training_step
        # tap sees it after
        factor = self.loss_factor if self.loss.summed and not self.loss.as_logged else 1.0
        for step, (value,) in losses:
            self.latest.loss, self.latest.loss_step = value * factor, step
            found = self.loss_detector.observe(step, value * factor)
            findings += [_with_local(found, value * factor)] if found else []
        return findings

    @property
    def probe_working(self) -> bool:
        return len(self.grad) > 0 and self._probe_steps > 0

    def observe_grad_norm(self, step: int, total: float, norms: list[float] | None = None) -> Finding | None:
        latest = self.latest
        latest.step, latest.grad_norm = step, total
        if math.isfinite(total):
            latest.grad_norm_max = max(total, latest.grad_norm_max or 0.0)
        ranked = self._rank_modules(norms) if norms else []
        if ranked:
            latest.top_module_norm, latest.top_module = ranked[0]
        found = self.grad_detector.observe(step, total)
        return self._with_modules(found, ranked, total) if found and ranked else found

    def _rank_modules(self, norms: list[float]) -> list[tuple[float, str]]:
        squares: dict[str, float] = {}
        for module, v in zip(self.modules, norms):
            squares[module] = squares.get(module, 0.0) + v * v
        return sorted(((math.sqrt(sq), m) for m, sq in squares.items()),
                      key=lambda t: (math.isnan(t[0]), 0.0 if math.isnan(t[0]) else t[0]), reverse=True)

    @staticmethod
    def _with_modules(found: Finding, ranked: list[tuple[float, str]], total: float) -> Finding:
        nonfinite = [m for v, m in ranked if not math.isfinite(v)]
        if nonfinite:
            where = f" Non-finite gradients in {len(nonfinite)} modules, first {', '.join(nonfinite[:TOP_MODULES_IN_FINDING])}."
        else:
            top = ranked[:TOP_MODULES_IN_FINDING]
            share = lambda v: f"{(v / total) ** 2:.0%}" if total else "?"  # noqa: E731
            where = " Largest module gradients: " + ", ".join(f"{m} {v:.3g} ({share(v)})" for v, m in top) + "."
        data = {**found.data, "top_modules": [[m, v] for v, m in ranked[:TOP_MODULES_IN_FINDING]],
                "nonfinite_modules": nonfinite[:20]}
        return dataclasses.replace(found, message=found.message + where, data=data)

    def adapter_checks(self, step: int) -> list[Finding]:
        """lora_B norms (dead adapters, once after ``dead_adapter_steps``) and update-to-weight ratios.

        Sharded adapters (FSDP) are skipped: the pre-flight said so once (``adapter-checks-sharded``)."""
        if not self.adapters or sharded_adapters(self.adapters):
            return []
        findings = []
        if not self._dead_checked and step >= self.thresholds.dead_adapter_steps:
            self._dead_checked = True
            _, b_norms = adapter_norms(self.adapters)
            self.latest.dead_adapters = sum(1 for v in b_norms if v == 0)
            found = dead_adapter_finding(self.adapters, b_norms, step)
            findings += [found] if found else []
        if self._base_norms is None:
            self._base_norms = base_norms(self.adapters)
        deltas = delta_norms(self.adapters)
        ratios = [d / w if w else None for d, w in zip(deltas, self._base_norms)]
        known = sorted(r for r in ratios if r is not None and math.isfinite(r))
        if known:
            self.latest.update_ratio_max = known[-1]
            self.latest.update_ratio_median = known[len(known) // 2]
        found = delta_ratio_finding([a.name for a in self.adapters], ratios, step, self.thresholds.max_update_ratio)
        return findings + ([found] if found else [])

    def metrics(self) -> dict[str, float]:
        """``doctor/`` entries for the Trainer's logs."""
        latest, stats = self.latest, self.grad_detector.stats()
        values: dict[str, Any] = {
            "doctor/grad_norm": latest.grad_norm,
            "doctor/grad_norm_max": latest.grad_norm_max,
            "doctor/grad_norm_median": stats.median,
            "doctor/grad_norm_threshold": stats.threshold,
            "doctor/loss": latest.loss,
            "doctor/top_module_grad_norm": latest.top_module_norm,
            "doctor/dead_adapters": latest.dead_adapters,
            "doctor/update_ratio_max": latest.update_ratio_max,
            "doctor/update_ratio_median": latest.update_ratio_median,
        }
        latest.grad_norm_max = None   # a maximum per logging interval
        return {k: float(v) for k, v in values.items() if v is not None}
