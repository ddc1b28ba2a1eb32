"""DPOTrainer (TRL 1.16, ``trl/trainer/dpo_trainer.py``): one step, as it runs by default.

* Chosen and rejected are concatenated: ``2 x batch_size`` rows of ``min(seq_len, max_length)``
  tokens (prompt + completion), scored by the fused LM head.
* ``disable_dropout=True`` (default) sets every dropout, LoRA's included, to 0.
* The reference log-probs come from a forward under ``torch.no_grad`` before the policy forward:
  with peft the adapters are disabled (``use_adapter``) and no second model exists; without peft a
  ``ref_model`` copy of the base weights stays on the device for the whole run, unless
  ``precompute_ref_log_probs=True`` (computed once before training, then dropped).
"""

from __future__ import annotations

from dataclasses import replace

from ..arch import ArchSpec
from ..memory.analytic import PhaseTotals
from ..plan_types import PlanSettings
from .common import compute_bytes, finish, persistent_only, resolve_workload, training_phases
from .fused_head import fused_head_bytes


def dpo_totals(arch: ArchSpec, s: PlanSettings, device: str) -> PhaseTotals:
    wl = resolve_workload(s)
    if wl.get("disable_dropout") and s.lora_dropout:
        s = replace(s, lora_dropout=0.0)
    cap = wl.get("max_length") or s.seq_len
    seq, rows = min(s.seq_len, cap), 2 * s.batch_size
    notes = [f"DPO batch: chosen + rejected concatenated, {rows} rows of {seq} tokens"
             + (f" (seq_len {s.seq_len} capped at max_length={cap})" if s.seq_len > cap else "")]
    base, phases, train_notes = training_phases(arch, s, device, wl, rows=rows, seq=seq,
                                                scored_tokens=rows * (seq - 1))
    start = phases["backward_start"]
    ref_copy = 0
    if s.mode == "full" and not wl.get("precompute_ref_log_probs"):
        ref_copy = start["weights"] + start["quantization_state"]
        notes.append(f"reference model: a ref_model copy of the weights ({ref_copy / 2**30:.2f} GiB) stays on the "
                     "device (precompute_ref_log_probs=True or LoRA avoids it)")
    elif s.mode == "full":
        notes.append("precompute_ref_log_probs: reference log-probs computed once before training; no ref_model kept")
    else:
        notes.append("reference forward: the same model with its adapters disabled, under no_grad (no second copy)")
    stream, compute = compute_bytes(s)
    tokens = rows * seq
    head = fused_head_bytes(tokens=rows * (seq - 1), hidden=arch.hidden_size, vocab=arch.vocab_size, stream=stream,
                            compute=compute, head_weight=4 if s.mode == "qlora" else stream,
                            triton=device == "cuda", trains_head=False, extra_outputs=False)
    reference = persistent_only(start)
    # no_grad forward: the residual stream, one block's scratch and the head's forward tiles
    reference["activations"] = 2 * tokens * arch.hidden_size * stream
    reference["temporaries"] = phases["backward_end"]["temporaries"] + head.saved + head.forward
    phases = {"reference_forward": reference, **phases}
    for bd in phases.values():
        bd["weights"] += ref_copy
    return finish(base, phases, notes + train_notes, wl)
