"""What would shrink a traced peak most: the largest term at the peak, and the lever for it."""

from __future__ import annotations

from typing import Callable

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


def shrink_advice(breakdown: dict[str, int], settings: PlanSettings, phase: str) -> str:
    """One sentence: the largest term at the peak and what makes it smaller."""
    term = max(LEVERS, key=lambda t: breakdown.get(t, 0))
    return (f"largest at the peak: {term.replace('_', ' ')} ({format_bytes(breakdown.get(term, 0))}); "
            f"to shrink it: {LEVERS[term](settings, phase)}")
