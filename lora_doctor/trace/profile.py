"""What autograd saved: the storages alive when backward starts, from one traced forward pass.

Used by :mod:`lora_doctor.memory.derive` to attribute saved activations to layers. Same model,
same fake tensors and same patches as :func:`lora_doctor.trace.trace_step`, but only the forward
pass runs (its end is all that is read), which halves the cost.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..measure.timeline import StorageRecord, StorageTimeline
from ..models import ResolvedModel
from ..plan_types import PlanSettings
from ..torch_dtypes import torch_dtype as dtype_of
from .build import build_model
from .modules import module_scope
from .patches import quiet_third_party, real_batch_decisions


def saved_at_backward_start(resolved: ResolvedModel, settings: PlanSettings, *, foreach: bool = True
                            ) -> tuple[list[StorageRecord], str | None, dict[str, int]]:
    """Live storages after forward, the module path of the decoder layer list, and the trainable
    parameters by module path."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from .run import _classifier, _empty

    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    with quiet_third_party():
        built = build_model(resolved, settings, _empty, fake_mode)
        prefix = _layers_prefix(built.model, resolved.arch.num_layers)
        trainable = {name: int(p.numel()) for name, p in built.model.named_parameters() if p.requires_grad}
        with fake_mode:
            head = built.base.get_output_embeddings()
            vocab = int(head.weight.shape[0]) if head is not None else 0
            timeline = StorageTimeline()
            timeline.classify = _classifier(timeline, vocab, settings.batch_size * max(settings.seq_len - 1, 1))
            timeline.register(built.weights, "weights")
            timeline.register(built.trainable, "adapters")
            timeline.register(built.quant_state, "quantization_state")
            ids = torch.zeros(settings.batch_size, settings.seq_len, dtype=torch.long)
            batch = {"input_ids": ids, "labels": ids.clone()}
            timeline.register(batch.values(), "inputs")
            amp = dtype_of(settings.mixed_precision) if settings.mixed_precision else None
            built.model.train()
            with real_batch_decisions(cuda_kernels=foreach), timeline, \
                    module_scope(built.model, lambda name: setattr(timeline, "module", name)):
                timeline.set_phase("forward")
                with torch.autocast("cpu", dtype=amp) if amp is not None else _null():
                    loss = built.model(**batch).loss
                timeline.set_phase("backward")
            alive: dict[int, StorageRecord] = {}
            for ev in timeline.events:
                if ev >= 0:
                    alive[ev] = timeline.records[ev]
                else:
                    alive.pop(~ev, None)
            del loss
    return list(alive.values()), prefix, trainable


def _layers_prefix(model: nn.Module, num_layers: int) -> str | None:
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) == num_layers and num_layers > 0:
            return name
    return None


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None
