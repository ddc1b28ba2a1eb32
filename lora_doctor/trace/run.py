"""Trace one training step of the real model on fake (or real) tensors and measure its peak."""

from __future__ import annotations

import gc
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from ..models import ResolvedModel
from ..plan_types import TENSOR_TERMS, PlanSettings
from ..torch_dtypes import torch_dtype as dtype_of
from .build import build_model
from .inputs import look_ahead, trace_batch
from .modules import module_scope
from .metadata import real_metadata
from .routing import balanced_routing
from .patches import quiet_third_party, real_batch_decisions
from .step import PAGED, make_optimizer, prime_optimizer, optimizer_state_tensors, run_training_steps
from ..measure.timeline import StorageRecord, StorageTimeline, replay

# Timeline category -> breakdown term. Phases are the default category of a new storage.
CATEGORY_TERMS: dict[str, str] = {
    "weights": "weights", "quantization_state": "quantization_state", "adapters": "adapters",
    "gradients": "gradients", "optimizer_states": "optimizer_states", "logits_and_loss": "logits_and_loss",
    "inputs": "activations", "forward": "activations", "recompute": "activations",
    "backward": "temporaries", "optimizer_step": "temporaries", "setup": "temporaries", "done": "temporaries",
    "paged_optimizer_states": "optimizer_states",
}
TOP_N = 5


@dataclass
class TopTensor:
    """A storage alive at the peak: what it is and what made it."""

    nbytes: int
    shape: list[int]
    dtype: str
    op: str
    module: str
    term: str
    phase: str

    @classmethod
    def from_record(cls, rec: StorageRecord) -> "TopTensor":
        return cls(rec.nbytes, list(rec.shape), rec.dtype, rec.op, rec.module,
                   CATEGORY_TERMS.get(rec.category, "temporaries"), rec.phase)


@dataclass
class TraceResult:
    """The measured step: peak, its composition by term and by phase, and the largest tensors."""

    peak_bytes: int
    peak_phase: str
    breakdown: dict[str, int]
    phase_peaks: dict[str, int]
    top_tensors: list[TopTensor]
    total_params: int
    trainable_params: int
    targets: list[str]
    notes: list[str] = field(default_factory=list)
    ops: int = 0
    seconds: float = 0.0
    fake: bool = True
    timeline: Any = field(default=None, repr=False)   # the StorageTimeline, with keep_timeline=True


def trace_step(resolved: ResolvedModel, settings: PlanSettings, *, fake: bool = True, steps: int = 1,
               prime: bool = True, foreach: bool = True, keep_timeline: bool = False) -> TraceResult:
    # foreach=True means "as on CUDA": foreach optimizer/clipping and CUDA's SDPA memory behaviour.
    """Build the model (fake tensors unless ``fake=False``), run ``steps`` Trainer steps, replay the log.

    With ``prime`` the optimizer states are created first from zero gradients (see
    :func:`~lora_doctor.trace.step.prime_optimizer`), so one traced step sees them; the CPU benchmark
    checks this against two real steps without priming (``steps=2, prime=False``).
    """
    with quiet_third_party():
        return _trace_step(resolved, settings, fake=fake, steps=steps, prime=prime, foreach=foreach,
                           keep_timeline=keep_timeline)


def _trace_step(resolved: ResolvedModel, settings: PlanSettings, *, fake: bool, steps: int, prime: bool,
                foreach: bool, keep_timeline: bool) -> TraceResult:
    start = time.perf_counter()
    gc.collect()
    fake_mode = None
    if fake:
        from torch._subclasses.fake_tensor import FakeTensorMode

        fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    built = build_model(resolved, settings, _empty if fake else _random, fake_mode)
    with fake_mode if fake_mode is not None else nullcontext():
        vocab = int(built.base.get_output_embeddings().weight.shape[0]) if built.base.get_output_embeddings() else 0
        tokens = settings.batch_size * max(settings.seq_len - 1, 1)
        timeline = StorageTimeline()
        timeline.classify = _classifier(timeline, vocab, tokens)
        trainable_term = "adapters" if settings.mode in ("lora", "qlora") else "weights"
        timeline.register(built.weights, "weights")
        timeline.register(built.trainable, trainable_term)
        timeline.register(built.quant_state, "quantization_state")
        batch = trace_batch(resolved, settings)
        timeline.register(batch.values(), "inputs")
        ahead = look_ahead(batch) if resolved.arch.towers and not foreach else []   # held through the step
        timeline.register(ahead, "inputs")   # on CPU the look-ahead batch shares the memory
        optimizer = make_optimizer(settings.optim, built.trainable, foreach=foreach)
        state_label = "paged_optimizer_states" if settings.optim in PAGED else "optimizer_states"
        autocast = dtype_of(settings.mixed_precision) if settings.mixed_precision else None
        if prime:
            prime_optimizer(optimizer, built.trainable)
            timeline.relabel(optimizer_state_tensors(optimizer), state_label)
        with real_batch_decisions(cuda_kernels=foreach), real_metadata(resolved.arch.model_type), \
                balanced_routing(resolved.arch.model_type, fake, built.model), timeline, module_scope(built.model, lambda name: setattr(timeline, "module", name)):
            run_training_steps(
                built.model, batch, optimizer, steps=steps, autocast_dtype=autocast, foreach=foreach,
                on_phase=timeline.set_phase,
                after_backward=lambda: timeline.relabel(
                    [p.grad for p in built.trainable if p.grad is not None], "gradients"),
                after_step=lambda: timeline.relabel(optimizer_state_tensors(optimizer), state_label),
            )
        notes = list(built.notes)
        if state_label == "paged_optimizer_states":
            for rec in timeline.records:
                if rec.category == state_label:
                    rec.nbytes = 0
            notes.append(f"{settings.optim}: optimizer states are paged (CUDA unified memory), outside the "
                         "allocator's peak; traced with the unpaged optimizer")
        result = replay(timeline, skip_phases=("setup", "done"))
        trainable = sum(p.numel() for p in built.trainable)
    breakdown = {term: 0 for term in TENSOR_TERMS}
    for category, nbytes in result.by_category.items():
        term = CATEGORY_TERMS.get(category, "temporaries")
        breakdown[term] += nbytes
    return TraceResult(
        peak_bytes=result.peak_bytes, peak_phase=result.peak_phase, breakdown=breakdown,
        phase_peaks={p: result.phase_peaks[p] for p in ("forward", "backward", "optimizer_step")
                     if p in result.phase_peaks},
        top_tensors=[TopTensor.from_record(r) for r in
                     [r for r in result.alive_at_peak if r.op != "register"][:TOP_N]],
        total_params=resolved.arch.total_params, trainable_params=int(trainable),
        targets=built.targets, notes=notes, ops=timeline.ops_seen,
        seconds=time.perf_counter() - start, fake=fake, timeline=timeline if keep_timeline else None,
    )


def _empty(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)


def _random(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    if dtype.is_floating_point:
        return (torch.randn(shape) * 0.02).to(dtype)
    return torch.zeros(shape, dtype=dtype)


def _classifier(timeline: StorageTimeline, vocab: int, tokens: int) -> Any:
    """Vocabulary-sized tensors are logits/loss; ops inside a module during backward are recompute."""

    def classify(t: torch.Tensor, phase: str) -> str | None:
        if vocab and t.dim() >= 2 and t.shape[-1] == vocab and t.numel() >= vocab * tokens:
            return "logits_and_loss"
        if phase == "backward" and timeline.module:
            return "recompute"
        return None

    return classify
