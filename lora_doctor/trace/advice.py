"""What would shrink a traced peak most: the largest term at the peak, and the lever for it."""

from __future__ import annotations

from typing import Callable

from ..arch import ArchSpec
from ..plan_types import PlanSettings
from ..units import format_bytes


def _activations(s: PlanSettings, phase: str) -> str:
    if not s.gradient_checkpointing:
        return "enable gradient checkpointing (keeps one layer input per block instead of every saved tensor)"
    return "a smaller micro-batch or shorter sequences (activations grow with batch x seq_len)"


def _temporaries(s: PlanSettings, phase: str) -> str:
    if phase == "optimizer_step" and s.optim in ("adamw_torch", "adamw_hf"):
        return "the fused AdamW (--optim adamw_torch_fused) skips the foreach scratch copy"
    if s.mode == "qlora":
        return "a smaller micro-batch; each 4-bit linear dequantizes its weight transiently in backward"
    return "a smaller micro-batch or shorter sequences"


# term -> lever, given the settings and the phase of the peak.
LEVERS: dict[str, Callable[[PlanSettings, str], str]] = {
    "weights": lambda s, p: "load the base in 4-bit (--mode qlora)" if s.mode != "qlora"
    else "a smaller model, or shard it across GPUs",
    "quantization_state": lambda s, p: "double quantization (on by default) shrinks absmax fourfold",
    "adapters": lambda s, p: "a lower rank r or fewer target modules",
    "gradients": lambda s, p: "LoRA (--mode lora): gradients only for the adapters" if s.mode == "full"
    else "a lower rank r or fewer target modules",
    "optimizer_states": lambda s, p: "LoRA (--mode lora) or an 8-bit optimizer (--optim adamw_bnb_8bit)"
    if s.mode == "full" else "an 8-bit optimizer (--optim adamw_bnb_8bit)",
    "activations": _activations,
    "logits_and_loss": lambda s, p: "shorter sequences or a smaller micro-batch; a chunked cross-entropy "
    "(e.g. Liger's fused linear cross-entropy) never materializes the fp32 [batch, seq, vocab] logits",
    "temporaries": _temporaries,
}


def shrink_advice(breakdown: dict[str, int], settings: PlanSettings, phase: str, arch: ArchSpec | None = None) -> str:
    """One sentence: the largest term at the peak and what makes it smaller."""
    term = max(LEVERS, key=lambda t: breakdown.get(t, 0))
    lever = LEVERS[term](settings, phase)
    if term == "weights" and settings.mode != "qlora" and arch is not None and not _quantizes_most(arch):
        lever = ("a smaller model, or shard it across GPUs (a 4-bit load would not help: bitsandbytes converts "
                 "only exact nn.Linear, and most of this model's linear weights are not)")
    return (f"largest at the peak: {term.replace('_', ' ')} ({format_bytes(breakdown.get(term, 0))}); "
            f"to shrink it: {lever}")


def _quantizes_most(arch: ArchSpec) -> bool:
    """Whether a 4-bit load converts most linear weights (not Falcon's FalconLinear, not fused MoE experts)."""
    from ..memory.persistent import quantized_families

    linear = sum(f.weight_params for f in arch.linear_families if f.scope != "head") + arch.expert_params
    quantized = sum(f.weight_params for f in quantized_families(arch))
    return not linear or quantized * 2 > linear
