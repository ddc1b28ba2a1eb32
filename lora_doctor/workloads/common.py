"""Shared pieces of the TRL workload models: the training phases of a step with TRL's fused LM head.

A TRL trainer's training forward is a plain step (:func:`lora_doctor.memory.analytic.step_peak`, on
the rows and length the trainer really builds) whose loss term is the fused head's instead of the
``(batch, seq, vocab)`` logits. Trainers add their own phases (DPO's reference forward, GRPO's
generation) on top; the peak is the highest phase.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..arch import ArchSpec
from ..memory.analytic import PhaseTotals, step_peak
from ..memory.tables import DTYPE_BYTES
from ..plan_types import PlanSettings
from .fused_head import fused_head_bytes
from .trl_defaults import TrlDefaults, defaults_for

# forward_layers / backward_layers: the walks through the layers' forward and backward, when the engine models
# them (trace-derived moments)
TRAINING_PHASES = ("forward_layers", "backward_start", "backward_layers", "backward_end", "optimizer_step")


@dataclass(frozen=True)
class Workload:
    """The resolved trainer settings a model reads: TRL's defaults, the user's options, the version note."""

    trainer: str
    defaults: TrlDefaults
    options: dict[str, Any]
    fused: bool
    notes: tuple[str, ...]

    def get(self, name: str) -> Any:
        return self.options.get(name, self.defaults.options[self.trainer].get(name))


def resolve_workload(s: PlanSettings) -> Workload:
    w = s.workload
    options = dict(w.options)
    version = options.pop("trl_version", "") or None
    defaults, version_note = defaults_for(version)
    fused = defaults.fused_lm_head if w.fused_lm_head is None else w.fused_lm_head
    notes = [version_note]
    if not s.gradient_checkpointing and defaults.gradient_checkpointing:
        notes.append(f"TRL's {w.trainer.upper()}Config turns gradient_checkpointing on by default; this plan has it "
                     "off (pass gradient_checkpointing=True / --gradient-checkpointing to plan TRL's default)")
    if options.get("use_liger_kernel"):
        notes.append("use_liger_kernel: TRL keeps its fused LM head and applies only Liger's layer kernels "
                     "(RMSNorm, SwiGLU, RoPE); planned as without them (their savings are not modelled)")
    return Workload(w.trainer, defaults, options, fused, tuple(notes))


def compute_bytes(s: PlanSettings) -> tuple[int, int]:
    """(stream, compute) bytes per element: the residual stream and the autocast (else stream) dtype."""
    stream = 4 if s.mode == "qlora" else DTYPE_BYTES[s.dtype]
    return stream, DTYPE_BYTES[s.mixed_precision] if s.mixed_precision else stream


def training_phases(arch: ArchSpec, s: PlanSettings, device: str, wl: Workload, *, rows: int, seq: int,
                    scored_tokens: int) -> tuple[PhaseTotals, dict[str, dict[str, int]], list[str]]:
    """The training phases of ``rows`` x ``seq`` (those of :func:`step_peak`, the layer walks included when it
    models them) with the fused head scoring ``scored_tokens``."""
    base = step_peak(arch, replace(s, batch_size=rows, seq_len=seq), device=device)
    phases = {name: dict(base.breakdowns[name]) for name in TRAINING_PHASES if name in base.breakdowns}
    notes: list[str] = []
    if wl.fused:
        stream, compute = compute_bytes(s)
        head_dtype = 4 if s.mode == "qlora" else DTYPE_BYTES[s.dtype]
        triton = device == "cuda"
        head = fused_head_bytes(tokens=scored_tokens, hidden=arch.hidden_size, vocab=arch.vocab_size,
                                stream=stream, compute=compute, head_weight=head_dtype, triton=triton,
                                trains_head=s.mode == "full", vocab_chunk=wl.defaults.head_vocab_chunk,
                                token_chunk=wl.defaults.head_token_chunk)
        phases["backward_start"]["logits_and_loss"] = head.peak
        path = ("Triton kernels (CUDA): log-probs folded in place in each tile" if triton else
                "torch fold (no Triton, e.g. CPU): fp32 tile temporaries in the forward and backward")
        notes.append(f"fused LM head (trl add_fused_lm_head): no (batch, seq, vocab) logits; tiles of "
                     f"{min(scored_tokens, wl.defaults.head_token_chunk)} tokens x {wl.defaults.head_vocab_chunk} "
                     f"vocabulary columns, {path}")
    else:
        notes.append("fused_lm_head=False: planned with the model's own (batch, seq, vocab) logits and loss")
    if wl.get("activation_offloading"):
        on_device = phases["backward_end"]["activations"]
        moved = phases["backward_start"]["activations"] - on_device
        phases["backward_start"]["activations"] = on_device
        for walk in ("forward_layers", "backward_layers"):   # the layers' saved tensors are offloaded as they go
            if walk in phases:
                phases[walk]["activations"] = min(phases[walk]["activations"], on_device)
        notes.append(f"activation_offloading: about {moved / 2**30:.2f} GiB of saved activations move to pinned "
                     "CPU memory; about one layer's stays on the GPU")
    return base, phases, notes


def finish(base: PhaseTotals, phases: dict[str, dict[str, int]], notes: list[str], wl: Workload,
           loss_bytes: int | None = None) -> PhaseTotals:
    """A PhaseTotals whose peak is the highest of ``phases``."""
    totals = {name: int(sum(bd.values())) for name, bd in phases.items()}
    peak = max(totals, key=totals.__getitem__)
    loss = max(bd.get("logits_and_loss", 0) for bd in phases.values()) if loss_bytes is None else loss_bytes
    all_notes = tuple(base.notes) + wl.notes + tuple(notes)
    return PhaseTotals(phases[peak], peak, totals, base.trainable_params, all_notes, base.targets, int(loss),
                       phases)


def persistent_only(bd: dict[str, int]) -> dict[str, int]:
    """The state that outlives a step (weights, quantization state, adapters, optimizer states)."""
    keep = ("weights", "quantization_state", "adapters", "optimizer_states")
    return {k: (v if k in keep else 0) for k, v in bd.items()}
