"""The analytic engine: peak tensor memory of a training step as the maximum over its phases.

A step (after the first, so optimizer states exist) goes through three high-water marks:

1. end of forward / start of backward: persistent state + every saved activation + the loss tensors
   (logits, their fp32 upcast, log-softmax and its gradient: up to 12 bytes per logit);
2. end of backward: persistent state + all gradients + the first block's activations + the scratch
   of one block's backward (and, for QLoRA, one dequantized weight matrix);
3. ``optimizer.step()``: persistent state + all gradients + the optimizer's temporaries.

Persistent state = weights + quantization state + adapters + optimizer states. The breakdown
reported is the one of the phase with the highest total.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..arch import ArchSpec
from ..plan_types import PlanSettings
from . import activations
from .persistent import persistent_terms
from .tables import DTYPE_BYTES
from .targets import targeted_families


@dataclass(frozen=True)
class PhaseTotals:
    breakdown: dict[str, int]
    phase: str
    phases: dict[str, int]
    trainable_params: int
    notes: tuple[str, ...]
    targets: tuple[str, ...]


def _dtypes(s: PlanSettings) -> activations.DtypeContext:
    load = DTYPE_BYTES[s.dtype]
    stream = 4 if s.mode == "qlora" else load
    if s.mixed_precision:
        matmul = DTYPE_BYTES[s.mixed_precision]
    elif s.mode == "qlora":
        matmul = stream  # bitsandbytes returns its output in the input dtype
    else:
        matmul = load
    return activations.DtypeContext(stream=stream, matmul=matmul, autocast=bool(s.mixed_precision))


def step_peak(arch: ArchSpec, s: PlanSettings, *, device: str = "cuda", lora_dropout: float = 0.0) -> PhaseTotals:
    """Tensor-memory peak of one training step; pure arithmetic on ``arch`` and ``s``."""
    full = s.mode == "full"
    targeted = [] if full else targeted_families(arch, s.target_modules)
    pers = persistent_terms(arch, mode=s.mode, dtype=s.dtype, targeted=targeted, r=s.r, optim=s.optim,
                            double_quant=s.double_quant, device=device)
    dt = _dtypes(s)
    est = activations.estimate(arch, seq_len=s.seq_len, full=full, targeted={f.example for f in targeted},
                               r=s.r, dt=dt, attn=s.attn_implementation, lora_dropout=lora_dropout)
    b, seq, L, V = s.batch_size, s.seq_len, max(arch.num_layers, 1), arch.vocab_size
    T = b * seq
    layer_tokens = est.per_layer_tokens + est.quadratic_per_layer * seq
    one_layer = T * layer_tokens
    if s.gradient_checkpointing:
        saved = T * (L * arch.hidden_size * dt.stream + est.outside_tokens)
        recompute = one_layer  # the block being recomputed during backward
    else:
        saved = T * (L * layer_tokens - est.first_layer_discount + est.outside_tokens)
        recompute = 0
    saved += est.shared_bytes * b
    if full and dt.cast_inputs:
        linear_params = sum(f.params for f in arch.linear_families)
        saved += linear_params * dt.matmul  # autocast's cached half-precision weight copies
    logit_bytes = dt.matmul if s.mixed_precision else (4 if s.mode == "qlora" else DTYPE_BYTES[s.dtype])
    loss_fwd = T * V * (logit_bytes + 8 if logit_bytes != 4 else 8)
    loss_bwd = max(T * V * 12, T * V * (4 + logit_bytes) + pers.head_gradient)
    loss_peak = max(loss_fwd, loss_bwd)
    dequant = pers.largest_linear_params * 2 if s.mode == "qlora" else 0
    transient = int(T * est.transient_tokens) + dequant

    base = {"weights": pers.weights, "quantization_state": pers.quantization_state,
            "adapters": pers.adapters, "optimizer_states": pers.optimizer_states}
    phases_bd = {
        # end of forward and start of backward; a full fine-tune's head gradient sits in the loss term
        "forward": dict(base, gradients=0, activations=int(saved + recompute), logits_and_loss=int(loss_peak), temporaries=dequant),
        "backward": dict(base, gradients=pers.gradients, activations=int(min(saved, one_layer) + recompute),
                         logits_and_loss=0, temporaries=transient),
        "optimizer_step": dict(base, gradients=pers.gradients, activations=0, logits_and_loss=0,
                               temporaries=pers.optimizer_scratch),
    }
    totals = {name: sum(bd.values()) for name, bd in phases_bd.items()}
    phase = max(totals, key=totals.__getitem__)
    notes = list(pers.notes)
    return PhaseTotals(phases_bd[phase], phase, totals, pers.trainable_params, tuple(notes),
                       tuple(sorted({f.name for f in targeted})))
