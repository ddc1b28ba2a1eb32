"""Training health from scalar series (gradient norm, loss): robust spike and non-finite detection.

Pure Python (no torch): numbers in, :class:`~lora_doctor.findings.Finding` out.

The rule, per series: keep a moving window of the last ``window`` *finite* values; once it holds
``warmup`` values, a new value ``x`` is a spike when

    x > median + sigmas * 1.4826 * MAD     and     x > min_ratio * median

(one-sided: only upward moves alarm). ``1.4826 * MAD`` estimates the standard deviation of normal
data while ignoring outliers, so one earlier spike does not mask the next one. The ``min_ratio``
guard keeps a nearly flat series (MAD close to 0) from alarming on harmless wiggles. A non-finite
value (NaN, inf) is an immediate alarm and never enters the window. Spikes do enter it, so a lasting
change of level stops alarming once it fills half the window; consecutive spikes are one episode and
give one finding. Large pre-training runs (OLMo, PaLM) act on spikes at about 6 sigma.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field

from ..findings import Finding

MAD_TO_SIGMA = 1.4826   # MAD * 1.4826 = standard deviation for normally distributed data


@dataclass(frozen=True)
class SpikeRule:
    """How one series is judged. Defaults are documented in docs/callback.md."""

    window: int = 50          # finite values kept for the median / MAD
    warmup: int = 10          # values needed before anything is judged a spike
    sigmas: float = 6.0       # alarm above median + sigmas * 1.4826 * MAD
    min_ratio: float = 2.0    # ... and above min_ratio * median

    def __post_init__(self) -> None:
        if self.window < 3 or not 2 <= self.warmup <= self.window:
            raise ValueError(f"need window >= 3 and 2 <= warmup <= window, got {self.window}, {self.warmup}")
        if self.sigmas <= 0 or self.min_ratio < 1:
            raise ValueError(f"need sigmas > 0 and min_ratio >= 1, got {self.sigmas}, {self.min_ratio}")


GRAD_NORM_RULE = SpikeRule()
LOSS_RULE = SpikeRule(window=50, warmup=10, sigmas=6.0, min_ratio=1.5)


@dataclass(frozen=True)
class SeriesSpec:
    """Finding codes and wording for one series."""

    name: str
    spike_code: str
    nonfinite_code: str
    spike_fix: str
    nonfinite_fix: str


GRAD_NORM = SeriesSpec(
    name="gradient norm",
    spike_code="grad-norm-spike",
    nonfinite_code="grad-norm-non-finite",
    spike_fix=("lower the learning rate or the LoRA scale (lora_alpha / r), keep max_grad_norm at 1.0, "
               "add warmup steps; check the batch that caused it"),
    nonfinite_fix=("use bf16 instead of fp16, lower the learning rate, keep max_grad_norm > 0; "
                   "restart from the last checkpoint"),
)
LOSS = SeriesSpec(
    name="loss",
    spike_code="loss-spike",
    nonfinite_code="loss-non-finite",
    spike_fix="lower the learning rate, add warmup steps, check the data around this step for broken samples",
    nonfinite_fix=("use bf16 instead of fp16 (fp16 overflows above 65504), lower the learning rate, "
                   "check for empty label masks (all -100) in the batch; restart from the last checkpoint"),
)


@dataclass
class SeriesStats:
    """What the window says right now (for logs and the status line)."""

    median: float | None
    sigma: float | None     # 1.4826 * MAD
    threshold: float | None


@dataclass
class SpikeDetector:
    """One series under one rule. Feed values in step order with :meth:`observe`."""

    spec: SeriesSpec
    rule: SpikeRule = field(default_factory=SpikeRule)
    nonfinite_patience: int = 0   # consecutive non-finite values tolerated (fp16 loss scaling skips steps)
    _values: deque = field(init=False, repr=False)
    _in_episode: bool = field(default=False, init=False)
    _nonfinite_run: int = field(default=0, init=False)
    last: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._values = deque(maxlen=self.rule.window)

    def stats(self) -> SeriesStats:
        med = statistics.median(self._values) if self._values else None
        if len(self._values) < self.rule.warmup or not med or med <= 0:
            return SeriesStats(med, None, None)
        sigma = MAD_TO_SIGMA * statistics.median(abs(v - med) for v in self._values)
        threshold = max(med + self.rule.sigmas * sigma, self.rule.min_ratio * med)
        return SeriesStats(med, sigma, threshold)

    def observe(self, step: int, value: float) -> Finding | None:
        """Judge ``value`` (taken at optimizer step ``step``) against the window, then add it."""
        self.last = value
        if not math.isfinite(value):
            self._nonfinite_run += 1
            if self._nonfinite_run <= self.nonfinite_patience or self._nonfinite_run > self.nonfinite_patience + 1:
                return None   # tolerated (fp16 overflow), or the same episode already reported
            return self._nonfinite(step, value)
        self._nonfinite_run = 0
        stats = self.stats()
        self._values.append(value)
        if stats.threshold is None or value <= stats.threshold:
            self._in_episode = False
            return None
        if self._in_episode:
            return None
        self._in_episode = True
        return self._spike(step, value, stats)

    def _spike(self, step: int, value: float, stats: SeriesStats) -> Finding:
        spec, ratio = self.spec, value / stats.median if stats.median else math.inf
        return Finding(
            spec.spike_code, "warning",
            f"{spec.name} spiked at step {step}: {value:.4g} is {ratio:.1f}x the recent median "
            f"{stats.median:.4g} (alarm above {stats.threshold:.4g}: median + {self.rule.sigmas:g} sigma "
            f"or {self.rule.min_ratio:g}x median, whichever is higher)",
            spec.spike_fix,
            {"step": step, "value": value, "median": stats.median, "sigma": stats.sigma,
             "threshold": stats.threshold},
        )

    def _nonfinite(self, step: int, value: float) -> Finding:
        spec = self.spec
        tolerated = f" after {self.nonfinite_patience} tolerated overflow steps" if self.nonfinite_patience else ""
        return Finding(
            spec.nonfinite_code, "error",
            f"{spec.name} is {value} at step {step}{tolerated}: the optimizer update from this step "
            "would write non-finite values into the weights",
            spec.nonfinite_fix,
            {"step": step, "value": str(value)},
        )

