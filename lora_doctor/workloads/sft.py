"""SFTTrainer (TRL 1.16, ``trl/trainer/sft_trainer.py``): one step, as it runs by default.

* Rows: without packing, ``batch_size`` rows of ``min(seq_len, max_length)`` tokens (the collator
  pads to the batch's longest example; ``seq_len`` is the longest example the run will see).
  With ``packing=True`` (default strategy ``"bfd"``, which turns ``padding_free`` on) the collator
  concatenates ``batch_size`` packed sequences of ``max_length`` into one row of
  ``batch_size * max_length`` tokens; ``padding_free=True`` alone does the same with the examples.
* Loss: the fused LM head (:mod:`.fused_head`), with ``outputs=("log_probs", "entropy", "is_top1")``;
  on CPU every position is scored, on CUDA only those with a label.
"""

from __future__ import annotations

from ..arch import ArchSpec
from ..memory.analytic import PhaseTotals
from ..plan_types import PlanSettings
from .common import finish, resolve_workload, training_phases


def sft_rows(s: PlanSettings, max_length: int | None, packing: bool, padding_free: bool) -> tuple[int, int, str]:
    """(rows, tokens per row, why) of the worst SFT batch."""
    cap = max_length or s.seq_len
    if packing:
        return 1, s.batch_size * cap, (f"packing: {s.batch_size} packed sequences of max_length={cap} "
                                       "flattened into one padding-free row")
    length = min(s.seq_len, cap)
    if padding_free:
        return 1, s.batch_size * length, f"padding_free: {s.batch_size} examples of {length} tokens in one row"
    why = (f"seq_len {s.seq_len} capped at max_length={cap}" if s.seq_len > cap
           else f"{s.batch_size} rows padded to the longest example ({length} tokens)")
    return s.batch_size, length, why


def sft_totals(arch: ArchSpec, s: PlanSettings, device: str) -> PhaseTotals:
    wl = resolve_workload(s)
    rows, seq, why = sft_rows(s, wl.get("max_length"), bool(wl.get("packing")), bool(wl.get("padding_free")))
    base, phases, notes = training_phases(arch, s, device, wl, rows=rows, seq=seq, scored_tokens=rows * (seq - 1))
    return finish(base, phases, [f"SFT batch: {why}"] + notes, wl)
