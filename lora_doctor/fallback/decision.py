"""The fallback decision: which levers to pull, in order, until the planned device peak fits the GPU.

Pure core: numbers and plans in, a :class:`FallbackDecision` out. No torch, no printing. The levers,
in the order they are tried (each one is kept when the next is added)::

    1. bf16 LoRA as asked                    (the plan the user asked for)
    2. + gradient checkpointing              (costs ~30% more compute, no quality)
    3. + 4-bit NF4 base (QLoRA)              (double quantization; small quality cost)
    4. + smaller micro-batch, more gradient accumulation, same effective batch

A lever is skipped when it changes nothing (checkpointing already on, the base already 4-bit).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

from ..errors import WontFitError
from ..plan_types import MemoryPlan, PlanSettings
from ..verdict import micro_batch_sizes
from ..units import format_bytes

PlanFn = Callable[[PlanSettings], MemoryPlan]

LEVER_TEXT = {
    "as_requested": "plan the run as asked",
    "gradient_checkpointing": "enable gradient checkpointing",
    "quantize_4bit": "load the frozen base linears in 4-bit NF4 (QLoRA)",
    "micro_batch": "shrink the micro-batch and raise gradient accumulation (same effective batch)",
}

MODE_TEXT = {"lora": "{dtype} LoRA", "qlora": "4-bit QLoRA", "full": "{dtype} full fine-tuning"}


@dataclass(frozen=True)
class FallbackStep:
    """One lever pulled and the plan it rests on."""

    lever: str                    # a key of LEVER_TEXT
    description: str              # what changed, in words
    device_peak_bytes: int        # the planner's predicted device peak after this step
    fits: bool
    settings: PlanSettings

    def to_dict(self) -> dict[str, Any]:
        return {"lever": self.lever, "description": self.description,
                "device_peak_bytes": self.device_peak_bytes, "fits": self.fits, "settings": self.settings.to_dict()}


@dataclass
class FallbackDecision:
    """What the fallback did: each step, the plan the result rests on, and the settings to train with."""

    capacity_bytes: int | None                 # the GPU's memory (None: no GPU given, nothing planned)
    batch_size: int                            # the effective batch the user asked for
    steps: list[FallbackStep] = field(default_factory=list)
    plan: MemoryPlan | None = None             # the plan of the final settings
    gradient_accumulation_steps: int = 1       # batch_size == micro_batch_size * this
    compute_dtype: str = "bf16"                # 4-bit matmul dtype (bf16 where the GPU supports it)
    requested: PlanSettings | None = None      # the settings asked for

    @property
    def settings(self) -> PlanSettings | None:
        """The settings to train with (the requested ones when nothing was planned)."""
        return self.steps[-1].settings if self.steps else self.requested

    @property
    def fits(self) -> bool | None:
        return self.steps[-1].fits if self.steps else None

    @property
    def micro_batch_size(self) -> int:
        return self.settings.batch_size if self.settings else self.batch_size

    @property
    def changed(self) -> list[str]:
        """The levers pulled beyond the requested plan."""
        return [s.lever for s in self.steps if s.lever != "as_requested"]

    @property
    def quantized(self) -> bool:
        return bool(self.settings and self.settings.mode == "qlora")

    def summary(self) -> str:
        """Human-readable: what was changed and why (one line per step)."""
        if not self.steps:
            return "no GPU given: loaded as asked, nothing planned"
        cap = format_bytes(self.capacity_bytes or 0)
        lines = [f"{'fits' if s.fits else 'does not fit'}: {s.description} -> "
                 f"{format_bytes(s.device_peak_bytes)} of {cap}" for s in self.steps]
        if self.gradient_accumulation_steps > 1:
            lines.append(f"set per_device_train_batch_size={self.micro_batch_size} and "
                         f"gradient_accumulation_steps={self.gradient_accumulation_steps} in TrainingArguments")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "capacity_bytes": self.capacity_bytes, "batch_size": self.batch_size, "fits": self.fits,
            "changed": self.changed, "micro_batch_size": self.micro_batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps, "compute_dtype": self.compute_dtype,
            "steps": [s.to_dict() for s in self.steps],
            "plan": self.plan.to_dict() if self.plan is not None else None,
        }


def decide(settings: PlanSettings, capacity_bytes: int, plan_fn: PlanFn, *, compute_dtype: str = "bf16",
           allow_quantize: bool = True, allow_micro_batch: bool = True) -> FallbackDecision:
    """Pull levers in order until ``plan_fn(settings).device_peak_bytes <= capacity_bytes``.

    ``allow_quantize`` / ``allow_micro_batch`` switch those levers off (a loaded model's data loader fixes
    its micro-batch). Raises :class:`WontFitError` (carrying the last plan, and ``.decision``) when even
    every lever together does not fit.
    """
    decision = FallbackDecision(capacity_bytes, settings.batch_size, compute_dtype=compute_dtype, requested=settings)

    def step(lever: str, s: PlanSettings, text: str) -> bool:
        result = plan_fn(s)
        fits = result.device_peak_bytes <= capacity_bytes
        decision.steps.append(FallbackStep(lever, text, result.device_peak_bytes, fits, s))
        decision.plan = result
        return fits

    what = MODE_TEXT.get(settings.mode, settings.mode).format(dtype=settings.dtype)
    if step("as_requested", settings, f"{what} as asked (micro-batch {settings.batch_size})"):
        return decision
    s = settings
    if not s.gradient_checkpointing:
        s = replace(s, gradient_checkpointing=True)
        if step("gradient_checkpointing", s, "+ gradient checkpointing"):
            return decision
    if allow_quantize and s.mode == "lora":
        s = replace(s, mode="qlora")
        if step("quantize_4bit", s, f"+ 4-bit {s.quant_type.upper()} base"
                                    f"{' (double quantization)' if s.double_quant else ''}, {compute_dtype} compute"):
            return decision
    micro_steps = [(m, settings.batch_size // m) for m in micro_batch_sizes(settings.batch_size) if allow_micro_batch]
    for i, (micro, accum) in enumerate(micro_steps):   # only the first that fits (or the last) is recorded
        trial = replace(s, batch_size=micro)
        if i < len(micro_steps) - 1 and plan_fn(trial).device_peak_bytes > capacity_bytes:
            continue
        if step("micro_batch", trial,
                f"+ micro-batch {micro} x {accum} accumulation steps (effective batch {settings.batch_size})"):
            decision.gradient_accumulation_steps = accum
            return decision
    tried = "; ".join(st.description for st in decision.steps)
    error = WontFitError(
        f"nothing fits in {format_bytes(capacity_bytes)}: the best plan needs "
        f"{format_bytes(decision.steps[-1].device_peak_bytes)} (largest term: "
        f"{decision.plan.largest_term.replace('_', ' ')}) after trying {tried}. "
        "Use a larger GPU, shorter sequences, or a smaller model.", decision.plan)
    error.decision = decision   # type: ignore[attr-defined]
    raise error
