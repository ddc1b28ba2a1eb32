"""What autograd saved: the storages alive when backward starts, from one traced forward pass.

Used by :mod:`lora_doctor.memory.derive` to attribute saved activations to layers. Same model,
same fake tensors and same patches as :func:`lora_doctor.trace.trace_step`, but only the forward
pass runs (its end is all that is read), which halves the cost.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Sequence

import torch
import torch.nn as nn

from ..measure.timeline import StorageRecord, StorageTimeline
from ..models import ResolvedModel
from ..plan_types import PlanSettings
from ..torch_dtypes import torch_dtype as dtype_of
from .build import build_model
from .modules import module_scope
from .patches import quiet_third_party, real_batch_decisions


def saved_at_backward_start(resolved: ResolvedModel, settings: PlanSettings,
                            shapes: Sequence[tuple[int, int]], *, foreach: bool = True
                            ) -> tuple[list[list[StorageRecord]], str | None, dict[str, int]]:
    """For each (batch, seq) shape: the storages alive after one forward pass. Also the module path
    of the decoder layer list and the trainable parameters by name. The model is built once."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from .run import _empty

    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    with quiet_third_party():
        built = build_model(resolved, settings, _empty, fake_mode)
        prefix = _layers_prefix(built.model, resolved.arch.num_layers)
        trainable = {name: int(p.numel()) for name, p in built.model.named_parameters() if p.requires_grad}
        with fake_mode:
            built.model.train()
            alive = [_forward(built, settings, batch, seq, foreach) for batch, seq in shapes]
    return alive, prefix, trainable


def _forward(built: Any, settings: PlanSettings, batch_size: int, seq_len: int, foreach: bool) -> list[StorageRecord]:
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
    with real_batch_decisions(cuda_kernels=foreach), timeline, \
            module_scope(built.model, lambda name: setattr(timeline, "module", name)):
        timeline.set_phase("forward")
        with torch.autocast("cpu", dtype=amp) if amp is not None else nullcontext():
            loss = built.model(**batch).loss
        timeline.set_phase("backward")
    alive: dict[int, StorageRecord] = {}
    for ev in timeline.events:
        if ev >= 0:
            alive[ev] = timeline.records[ev]
        else:
            alive.pop(~ev, None)
    del loss
    return list(alive.values())


def _layers_prefix(model: nn.Module, num_layers: int) -> str | None:
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) == num_layers and num_layers > 0:
            return name
    return None
