"""The analytic engine: peak tensor memory of a training step as the maximum over its phases.

A step (after the first, so optimizer states exist) goes through these high-water marks:

1. end of forward / start of backward: persistent state + every saved activation + the loss tensors
   (logits, their fp32 upcast, log-softmax and its gradient: up to 12 bytes per logit);
2. end of backward: persistent state + all gradients + the first block's activations + the scratch
   of one block's backward (and, for QLoRA, one dequantized weight matrix);
3. ``optimizer.step()``: persistent state + all gradients + the optimizer's temporaries;
4. with trace-derived backward terms (:mod:`.layer_terms`), each decoder layer's backward, from the last:
   persistent state + the gradients made so far + the saved activations of the layers not yet done +
   what that layer's backward adds (incoming gradient, its own gradients, kernel scratch such as the
   math SDPA path's ``[b, heads, s, s]`` gradients);
5. with trace-derived forward terms, each decoder layer's forward, from the first: persistent state + the
   saved activations of the layers before it and outside the layers + what that layer's forward holds
   (its own saved activations as they are made, and transients such as HY-V4's indexer scores or
   Qwen3-Next's chunked linear attention);
6. with a trace-derived forward tail, the rest of the forward after the last layer: persistent state + every
   saved activation + what the tail holds beyond them (the final norm's temporaries, the logits and loss as
   the model computes them, tensors the model's forward keeps until it returns, e.g. CPM-Ant's position bias).

Persistent state = weights + quantization state + adapters + optimizer states. The breakdown
reported is the one of the phase with the highest total.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

from ..arch import ArchSpec
from ..plan_types import PlanSettings
from . import activations, layer_terms
from .persistent import persistent_terms
from .tables import CUBLAS_WORKSPACE_BYTES, DTYPE_BYTES
from .targets import targeted_families


@dataclass(frozen=True)
class PhaseTotals:
    breakdown: dict[str, int]
    phase: str
    phases: dict[str, int]
    trainable_params: int
    notes: tuple[str, ...]
    targets: tuple[str, ...]
    loss_bytes: int           # logits-and-loss high-water mark, whichever phase peaks
    breakdowns: dict[str, dict[str, int]] = field(default_factory=dict)  # every phase's breakdown (workloads)


def _dtypes(s: PlanSettings) -> activations.DtypeContext:
    load = DTYPE_BYTES[s.dtype]
    stream = 4 if s.mode == "qlora" else load
    autocast = DTYPE_BYTES[s.mixed_precision] if s.mixed_precision else 0
    linear_out = stream if s.mode == "qlora" else (autocast or load)
    return activations.DtypeContext(stream=stream, linear_out=linear_out, autocast=autocast)


def _autocast_weight_cache(arch: ArchSpec, s: PlanSettings, dt: activations.DtypeContext) -> int:
    """Autocast's half-precision copies of linear weights, kept for backward (all but 4-bit ones)."""
    if not dt.autocast:
        return 0
    fams = arch.linear_families
    if s.mode == "qlora":
        fams = [f for f in fams if f.scope == "head" or not f.quantizable]  # fp32 after the kbit upcast
        stored = 4
    else:
        stored = DTYPE_BYTES[s.dtype]
    if stored == dt.autocast:
        return 0
    tied_head = arch.vocab_size * arch.hidden_size if arch.tied_embeddings else 0  # head reuses the embedding
    return (sum(f.weight_params for f in fams) + tied_head) * dt.autocast


def _estimate(arch: ArchSpec, s: PlanSettings, targeted: list, device: str) -> activations.ActivationEstimate:
    return activations.estimate(arch, seq_len=s.seq_len, full=s.mode == "full",
                                targeted={f.example for f in targeted}, r=s.r, dt=_dtypes(s),
                                attn=s.attn_implementation, lora_dropout=s.lora_dropout, device=device)


def _loss_forward_per_token(arch: ArchSpec, s: PlanSettings, dt: activations.DtypeContext) -> float:
    """Logits-and-loss bytes per token alive at the end of forward (before the loss backward)."""
    logit_bytes = dt.autocast or (4 if s.mode == "qlora" else DTYPE_BYTES[s.dtype])
    per = arch.vocab_size * (logit_bytes + 8 if logit_bytes != 4 else 8)
    if arch.extra.get("final_logit_softcapping"):  # Gemma-2: tanh(logits / cap) * cap keeps the tanh output
        per += arch.vocab_size * logit_bytes
    return per


def recipe_regions(arch: ArchSpec, s: PlanSettings, device: str = "cuda") -> dict[str, layer_terms.Term]:
    """The recipe's saved bytes per region, in the (a, q, e) basis of :mod:`.layer_terms`."""
    targeted = [] if s.mode == "full" else targeted_families(arch, s.target_modules)
    est = _estimate(arch, s, targeted, device)
    shared_per_token = est.shared_bytes / max(s.seq_len, 1)   # recipe: rope tables per sequence of the batch
    return {"layer": (est.per_layer_tokens, est.quadratic_per_layer, 0.0, 0.0),
            "first": (-est.first_layer_discount, 0.0, 0.0, 0.0),
            "outside": (est.outside_tokens + shared_per_token, 0.0, 0.0, 0.0),
            "logits": (_loss_forward_per_token(arch, s, _dtypes(s)), 0.0, 0.0, 0.0)}


def recipe_trainable(arch: ArchSpec, s: PlanSettings) -> tuple[float, float]:
    """Adapter parameters the recipe counts per layer (block families) and outside the layers."""
    if s.mode == "full":
        return 0.0, 0.0
    targeted = targeted_families(arch, s.target_modules)
    L = max(arch.num_layers, 1)
    per_layer = sum(s.r * (f.in_features + f.out_features) * f.count for f in targeted if f.scope == "blocks") / L
    outside = sum(s.r * (f.in_features + f.out_features) * f.count for f in targeted if f.scope != "blocks")
    return per_layer, outside


def step_peak(arch: ArchSpec, s: PlanSettings, *, device: str = "cuda") -> PhaseTotals:
    """Tensor-memory peak of one training step; pure arithmetic on ``arch`` and ``s``.

    The recipe's saved activations are corrected by the trace-derived residual of
    :mod:`.layer_terms` when the arch has one for this setting class.
    """
    full = s.mode == "full"
    targeted = [] if full else targeted_families(arch, s.target_modules)
    res = layer_terms.lookup(arch, s, device)
    pers = persistent_terms(arch, mode=s.mode, dtype=s.dtype, targeted=targeted, r=s.r, optim=s.optim,
                            double_quant=s.double_quant, device=device,
                            extra_adapter_params=res.extra_trainable() if res is not None else 0)
    dt = _dtypes(s)
    est = _estimate(arch, s, targeted, device)
    b, seq, L, V = s.batch_size, s.seq_len, max(arch.num_layers, 1), arch.vocab_size
    T = b * seq
    layer_tokens = est.per_layer_tokens + est.quadratic_per_layer * seq
    kinds = list(res.layer_kinds) if res is not None and len(res.layer_kinds) == L else [0] * L
    by_kind = {k: T * layer_tokens + (res.term(res.layers[k], T, seq) if res is not None and k < len(res.layers)
                                      else 0.0) for k in set(kinds)}
    one_layer = max(by_kind.values())
    outside = T * est.outside_tokens + est.shared_bytes * b + (res.term(res.outside, T, seq) if res else 0.0)
    if s.gradient_checkpointing:
        saved = T * L * arch.hidden_size * dt.stream + outside
        recompute = one_layer  # the block being recomputed during backward
        last_held = T * arch.hidden_size * dt.stream + outside   # at the end: layer 0's checkpoint, the embeddings'
    else:
        first = -T * est.first_layer_discount + (res.term(res.first, T, seq) if res else 0.0)
        saved = sum(by_kind[k] for k in kinds) + first + outside
        recompute = 0
        last_held = one_layer   # at the end: the saved activations of layer 0, whose backward makes the last gradients
    if res is None or not res.autocast:  # a residual derived under autocast already holds the copies
        saved += _autocast_weight_cache(arch, s, dt)
    logit_bytes = dt.autocast or (4 if s.mode == "qlora" else DTYPE_BYTES[s.dtype])
    logits_residual = res.term(res.logits, T, seq) if res else 0.0
    loss_fwd = T * _loss_forward_per_token(arch, s, dt) + logits_residual
    # what the trace saw beyond the recipe at the end of forward stays alive into the loss backward
    loss_bwd = max(T * V * 12, T * V * (4 + logit_bytes) + pers.head_gradient) + max(logits_residual, 0.0)
    if arch.extra.get("loss_in_logits_dtype"):  # Whisper: CrossEntropyLoss on the logits as they are, no fp32 copy
        loss_fwd = 2 * T * V * logit_bytes                           # logits + log-softmax
        loss_bwd = max(3 * T * V * logit_bytes, 2 * T * V * logit_bytes + pers.head_gradient)  # + the gradients
    if arch.extra.get("final_logit_softcapping"):
        loss_bwd += T * V * logit_bytes
    loss_peak = max(loss_fwd, loss_bwd)
    if res is not None and res.backward_loss:  # traced: logits and loss in the dtypes the model uses
        traced_loss = int(res.highest(res.backward_loss, T, seq))
        # derived for these dtypes and adapters, the trace replaces the recipe (CPM-Ant's CrossEntropyLoss on
        # the bf16 logits, no fp32 copy: 6 bytes per logit where the recipe says 12); borrowed, it only adds
        loss_peak = max(loss_peak, traced_loss) if res.only_adds else traced_loss
    dequant = pers.largest_quantized_params * 2 if s.mode == "qlora" else 0
    transient = int(T * est.transient_tokens) + dequant

    # the recomputed layer 0 is backward_layers' (its moments hold it) when the class has backward moments
    recompute_end = 0 if res is not None and res.backward else recompute
    workspace = CUBLAS_WORKSPACE_BYTES if device == "cuda" else 0
    base = {"weights": pers.weights, "quantization_state": pers.quantization_state,
            "adapters": pers.adapters, "optimizer_states": pers.optimizer_states}
    phases_bd = {
        # end of forward and start of backward; a full fine-tune's head gradient sits in the loss term
        "backward_start": dict(base, gradients=0, activations=int(saved), logits_and_loss=int(loss_peak), temporaries=dequant + workspace),
        "backward_end": dict(base, gradients=pers.gradients,
                             activations=int(min(saved, last_held) + recompute_end),
                         logits_and_loss=0, temporaries=transient + workspace),
        "optimizer_step": dict(base, gradients=pers.gradients, activations=0, logits_and_loss=0,
                               temporaries=pers.optimizer_scratch + workspace),
    }
    if res is not None and res.backward:
        cache = _autocast_weight_cache(arch, s, dt) if not res.autocast else 0
        layer_saved = [by_kind[k] for k in kinds]
        if s.gradient_checkpointing:   # the checkpoints of layers <= i, and layer i recomputed
            layer_saved = [T * arch.hidden_size * dt.stream] * L
        first_term = -T * est.first_layer_discount + res.term(res.first, T, seq)
        saved_i, grads_i, extra_i = _layer_backward(res, kinds, layer_saved, pers, s, T, seq)
        recomputed = by_kind[kinds[grads_i[1]]] if s.gradient_checkpointing else 0
        activations = saved_i + first_term + outside + cache + recomputed + min(extra_i, 0.0)
        phases_bd["backward_layers"] = dict(base, gradients=int(grads_i[0]), activations=int(activations),
                                            logits_and_loss=0, temporaries=int(max(extra_i, 0.0)) + workspace)
        if s.gradient_checkpointing and res.forward:   # layer i's forward, recomputed with the gradients so far
            below, (grads, _), held = _layer_recompute(res, kinds, layer_saved, pers, s, T, seq)
            incoming = T * arch.hidden_size * dt.stream   # the gradient of layer i's output, alive meanwhile
            recompute_bd = dict(base, gradients=int(grads), activations=int(below + outside + cache + incoming),
                                logits_and_loss=0, temporaries=int(held) + workspace)
            if sum(recompute_bd.values()) > sum(phases_bd["backward_layers"].values()):
                phases_bd["backward_layers"] = recompute_bd
    if res is not None and res.forward:
        layer_saved = [T * arch.hidden_size * dt.stream] * L if s.gradient_checkpointing \
            else [by_kind[k] for k in kinds]
        cache = _autocast_weight_cache(arch, s, dt) if not res.autocast else 0
        first_term = 0.0 if s.gradient_checkpointing else -T * est.first_layer_discount + res.term(res.first, T, seq)
        before, extra = _layer_forward(res, kinds, layer_saved, first_term, T, seq)
        phases_bd["forward_layers"] = dict(base, gradients=0, activations=int(before + outside + cache),
                                           logits_and_loss=0, temporaries=int(extra) + workspace)
    if res is not None and res.forward_tail:   # after the last layer: the final norm, logits and loss, and
        tail = res.highest(res.forward_tail, T, seq)   # what the model's forward holds until it returns
        phases_bd["forward_end"] = dict(base, gradients=0, activations=int(saved), logits_and_loss=0,
                                        temporaries=int(tail) + workspace)
    totals = {name: sum(bd.values()) for name, bd in phases_bd.items()}
    phase = max(totals, key=totals.__getitem__)
    notes = list(pers.notes)
    return PhaseTotals(phases_bd[phase], phase, totals, pers.trainable_params, tuple(notes),
                       tuple(sorted({f.name for f in targeted})), int(loss_peak), phases_bd)


def _layer_backward(res: layer_terms.Residual, kinds: list[int], layer_saved: list[float], pers,
                    s: PlanSettings, T: int, seq: int) -> tuple[float, tuple[float, int], float]:
    """The highest layer backward, walking from the last layer: (saved bytes of layers <= i,
    (gradients made before it, i), what its backward adds)."""
    return _walk_back(res, kinds, layer_saved, pers, s, T, seq, _of_layer(res.backward_first, res.backward))


def _of_layer(first: tuple, per_kind: tuple) -> Callable[[int, int], tuple]:
    """The moments of layer ``i`` of kind ``k``: layer 0's own, else its kind's (none for a kind not derived)."""
    return lambda i, k: first if i == 0 else (per_kind[k] if k < len(per_kind) else ())


def _walk_back(res: layer_terms.Residual, kinds: list[int], layer_saved: list[float], pers, s: PlanSettings,
               T: int, seq: int, terms_of: Callable[[int, int], tuple]) -> tuple[float, tuple[float, int], float]:
    """The highest of ``saved + gradients made + moment`` over the layers, from the last: ``saved`` is what
    the layers ``<= i`` keep (their checkpoints under gradient checkpointing: layer i's input is one), the
    gradients those of the layers after ``i`` (and the head's)."""
    grad_bytes = DTYPE_BYTES[s.dtype] if s.mode == "full" else 4
    params = res.layer_params
    grads = float(pers.head_gradient)      # full fine-tuning: the head's gradient comes first
    below = sum(layer_saved)
    best: tuple[float, float, tuple[float, int], float] | None = None
    for i in reversed(range(len(kinds))):
        k = kinds[i]
        extra = res.highest(terms_of(i, k), T, seq)
        total = below + grads + extra
        if best is None or total > best[0]:
            best = (total, below, (grads, i), extra)
        below -= layer_saved[i]
        grads += (params[k] if k < len(params) else 0.0) * grad_bytes
    assert best is not None
    return best[1], best[2], best[3]


def _layer_recompute(res: layer_terms.Residual, kinds: list[int], checkpoints: list[float], pers,
                     s: PlanSettings, T: int, seq: int) -> tuple[float, tuple[float, int], float]:
    """Under gradient checkpointing, the highest recomputed layer forward, walking from the last layer:
    (the checkpoints of the layers up to it, (gradients made before it, i), what its forward holds beyond
    them: :func:`_layer_forward`'s moments, now with the later layers' gradients alive). HY-V4's indexer
    makes its ``[b, s, heads, s]`` products again in backward: full bf16 at batch 1, seq 512 was -5.5%
    without this (tiny config, against the trace)."""
    return _walk_back(res, kinds, checkpoints, pers, s, T, seq, _of_layer(res.forward_first, res.forward))


def _layer_forward(res: layer_terms.Residual, kinds: list[int], layer_saved: list[float], first_term: float,
                   T: int, seq: int) -> tuple[float, float]:
    """The highest layer forward, walking from the first layer: (saved bytes of the layers before it, what its
    forward holds beyond them)."""
    forward_of = _of_layer(res.forward_first, res.forward)
    best = (0.0, 0.0)
    before = 0.0
    for i, k in enumerate(kinds):
        extra = res.highest(forward_of(i, k), T, seq)
        if before + extra > sum(best):
            best = (before, extra)
        before += layer_saved[i] + (first_term if i == 0 else 0.0)
    return best


PERSISTENT_TERMS = ("weights", "quantization_state", "adapters", "optimizer_states")


def with_extra_terms(totals: PhaseTotals, extra_activations: Mapping[str, int] | None = None,
                     extra_phases: Mapping[str, Mapping[str, int]] | None = None) -> PhaseTotals:
    """``totals`` with activations added to some phases and whole phases added, the peak re-picked.

    The hook other parts of the model add through, whatever trainer made ``totals`` (multimodal
    towers: :mod:`lora_doctor.memory.towers`). An added phase holds the persistent terms of the step.
    """
    if not extra_activations and not extra_phases:
        return totals
    phases_bd = {name: dict(bd) for name, bd in (totals.breakdowns or {totals.phase: totals.breakdown}).items()}
    ref = phases_bd.get("backward_start") or next(iter(phases_bd.values()))
    base = {term: ref.get(term, 0) for term in PERSISTENT_TERMS}
    for name, extra in (extra_activations or {}).items():
        if name in phases_bd:
            phases_bd[name]["activations"] = phases_bd[name].get("activations", 0) + int(extra)
    for name, terms in (extra_phases or {}).items():
        phases_bd[name] = dict(base, **{k: int(v) for k, v in terms.items()})
    sums = {name: sum(bd.values()) for name, bd in phases_bd.items()}
    phase = max(sums, key=sums.__getitem__)
    return replace(totals, breakdown=phases_bd[phase], phase=phase, phases=sums, breakdowns=phases_bd)
