"""What autograd saved: the storages alive when backward starts, from one traced forward pass;
optionally, what each decoder layer's forward and backward add on top (:class:`LayerPass`).

Used by :mod:`lora_doctor.memory.derive` to attribute saved activations to layers. Same model,
same fake tensors and same patches as :func:`lora_doctor.trace.trace_step`; without ``backward``
only the forward pass runs (its end is all that is read), which halves the cost.

A layer's forward runs from its forward pre-hook to the next layer's (the last one's ends at its forward
hook): a transient made and freed inside it (HY-V4's indexer scores, fp32 attention scores) can make the
peak of a step there. A layer's backward starts when the gradient of its output arrives (a tensor hook:
no change to the graph or to what it saves) and ends when the next layer's starts, or when the gradient of layer 0's
input arrives (the end of backward when the embeddings do not train).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn

from ..measure.timeline import StorageRecord, StorageTimeline
from ..models import ResolvedModel
from ..plan_types import PlanSettings
from ..torch_dtypes import torch_dtype as dtype_of
from .build import build_model
from .modules import module_scope
from .patches import quiet_third_party, real_batch_decisions
from .metadata import MASK_READERS, real_metadata
from .routing import balanced_routing


@dataclass(frozen=True)
class LayerPass:
    """One decoder layer's forward or backward in a traced step (bytes of non-persistent storages)."""

    layer: int               # backward: the number of layers is the loss and the head, before the last layer
    curve: tuple[int, ...]   # bytes alive when it starts and after each allocation while it runs
    gradients: int           # parameter gradients already made when it starts (layers after it, the head)
    ops: tuple[str, ...] = ()   # the op behind each point of the curve ("" for the start)

    @property
    def peak(self) -> int:
        return max(self.curve)


def saved_at_backward_start(resolved: ResolvedModel, settings: PlanSettings,
                            shapes: Sequence[tuple[int, int]], *, foreach: bool = True, backward: bool = False
                            ) -> tuple[list[Any], str | None, dict[str, int]]:
    """For each (batch, seq) shape: the storages alive after one forward pass. Also the module path
    of the decoder layer list and the trainable parameters by name. The model is built once.

    With ``backward`` each shape's entry is ``(alive, [backward LayerPass, ...], [forward LayerPass, ...])``:
    backward runs too."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from .run import _empty

    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    with quiet_third_party():
        built = build_model(resolved, settings, _empty, fake_mode)
        prefix = _layers_prefix(built.model, resolved.arch.num_layers)
        trainable = {name: int(p.numel()) for name, p in built.model.named_parameters() if p.requires_grad}
        with fake_mode:
            built.model.train()
            layers = built.model.get_submodule(prefix) if (backward and prefix is not None) else None
            mask = real_metadata(resolved.arch.model_type) if resolved.arch.model_type in MASK_READERS else nullcontext()
            with balanced_routing(resolved.arch.model_type, model=built.model), mask:
                alive = [_forward(built, settings, batch, seq, foreach, layers) for batch, seq in shapes]
    if backward and layers is None:  # no decoder layer list found: no layer to time
        alive = [(records, [], []) for records in alive]
    return alive, prefix, trainable


def _forward(built: Any, settings: PlanSettings, batch_size: int, seq_len: int, foreach: bool,
             layers: Any = None) -> Any:
    from .run import _classifier

    head = built.base.get_output_embeddings()
    vocab = int(head.weight.shape[0]) if head is not None else 0
    timeline = StorageTimeline()
    timeline.classify = _classifier(timeline, vocab, batch_size * max(seq_len - 1, 1))
    # storages that exist before the step: views of them (a weight's .t()) are not new memory
    timeline.register(built.weights, "weights")
    timeline.register(built.trainable, "adapters")
    timeline.register(built.quant_state, "quantization_state")
    ids = torch.zeros(batch_size, seq_len, dtype=torch.long)
    batch = {"input_ids": ids, "labels": ids.clone()}
    timeline.register(batch.values(), "inputs")
    amp = dtype_of(settings.mixed_precision) if settings.mixed_precision else None
    marks: list[tuple[int, int]] = []   # (event index, layer whose backward starts; -1: layer 0's ends)
    forward_marks: list[tuple[int, int]] = []   # (event index, layer whose forward starts; n: the last one's ends)
    with real_batch_decisions(cuda_kernels=foreach), timeline, \
            module_scope(built.model, lambda name: setattr(timeline, "module", name)), \
            _layer_marks(layers, lambda i: marks.append((len(timeline.events), i))), \
            _forward_marks(layers, lambda i: forward_marks.append((len(timeline.events), i))):
        timeline.set_phase("forward")
        with torch.autocast("cpu", dtype=amp) if amp is not None else nullcontext():
            loss = built.model(**batch).loss
        timeline.set_phase("backward")
        start = len(timeline.events)
        if layers is not None:
            loss.backward()
    alive = _alive(timeline, start)
    del loss
    if layers is None:
        return alive
    params = [p for p in built.model.parameters() if p.requires_grad and p.grad is not None]
    grads = {timeline._live[id(p.grad.untyped_storage())][1] for p in params
             if id(p.grad.untyped_storage()) in timeline._live}
    for p in params:
        p.grad = None
    forwards = _layer_passes(timeline, forward_marks, set(), upto=start)
    return alive, _layer_passes(timeline, marks + [(start, len(layers))], grads), forwards


def _alive(timeline: StorageTimeline, upto: int) -> list[StorageRecord]:
    alive: dict[int, StorageRecord] = {}
    for ev in timeline.events[:upto]:
        if ev >= 0:
            alive[ev] = timeline.records[ev]
        else:
            alive.pop(~ev, None)
    return [r for r in alive.values() if r.op != "register"]


@contextmanager
def _layer_marks(layers: Any, mark: Any) -> Iterator[None]:
    """Call ``mark(i)`` when the gradient of layer ``i``'s output arrives, ``mark(-1)`` for layer 0's input."""
    if layers is None:
        yield
        return

    def on_output(i: int) -> Any:
        def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(out, torch.Tensor) and out.requires_grad:
                out.register_hook(lambda grad: mark(i))
        return hook

    def on_input(module: nn.Module, args: Any, kwargs: Any) -> None:
        x = args[0] if args else kwargs.get("hidden_states")
        if isinstance(x, torch.Tensor) and x.requires_grad:
            x.register_hook(lambda grad: mark(-1))

    handles = [layer.register_forward_hook(on_output(i), with_kwargs=True) for i, layer in enumerate(layers)]
    handles.append(layers[0].register_forward_pre_hook(on_input, with_kwargs=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _forward_marks(layers: Any, mark: Any) -> Iterator[None]:
    """Call ``mark(i)`` when layer ``i``'s forward starts, ``mark(len(layers))`` when the last one's ends."""
    if layers is None:
        yield
        return
    n = len(layers)
    handles = [layer.register_forward_pre_hook(lambda *_, i=i: mark(i)) for i, layer in enumerate(layers)]
    handles.append(layers[n - 1].register_forward_hook(lambda *_: mark(n)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _layer_passes(timeline: StorageTimeline, marks: list[tuple[int, int]], grads: set[int],
                  upto: int | None = None) -> list[LayerPass]:
    """Replay the log up to event ``upto``: per layer, the non-persistent bytes alive while its pass (from its
    mark to the next one) runs, and the parameter gradients alive when it starts."""
    records, events = timeline.records, timeline.events
    bounds = sorted(marks) + [(len(events) if upto is None else upto, -2)]
    out = []
    current = grad_bytes = 0
    pos = 0
    for (at, layer), (end, _) in zip(bounds, bounds[1:]):
        for ev in events[pos:at]:
            current, grad_bytes = _step(records, ev, current, grad_bytes, grads)
        curve, ops, start_grads = [current], [""], grad_bytes
        for ev in events[at:end]:
            current, grad_bytes = _step(records, ev, current, grad_bytes, grads)
            if ev >= 0:
                curve.append(current)
                ops.append(records[ev].op)
        pos = end
        if layer >= 0:
            out.append(LayerPass(layer, tuple(curve), start_grads, tuple(ops)))
    return out


def _step(records: list[StorageRecord], ev: int, current: int, grad_bytes: int, grads: set[int]) -> tuple[int, int]:
    idx = ev if ev >= 0 else ~ev
    rec = records[idx]
    if rec.op == "register":
        return current, grad_bytes
    sign = 1 if ev >= 0 else -1
    return current + sign * rec.nbytes, grad_bytes + (sign * rec.nbytes if idx in grads else 0)


def _layers_prefix(model: nn.Module, num_layers: int) -> str | None:
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) == num_layers and num_layers > 0:
            return name
    return None
