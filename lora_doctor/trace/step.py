"""One ``Trainer`` training step, as plain code that runs on real or fake tensors.

What ``transformers.Trainer.training_step`` and its loop do for a micro-batch with gradient
accumulation 1: ``model.train()``; forward with ``labels`` under autocast when mixed precision is
on (the loss is computed inside the model); ``loss.backward()`` outside autocast; gradient
clipping to 1.0; ``optimizer.step()``; ``model.zero_grad()`` (set to None). The optimizers are built
as ``Trainer`` builds them for each ``optim`` name, with ``foreach=True`` where PyTorch would pick it
on a CUDA device, so the optimizer's temporaries are those of a GPU run.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Iterable

import torch
import torch.nn as nn

from ..errors import InvalidSettingError

PHASES = ("forward", "backward", "optimizer_step")
LR = 2e-4


def _adamw(params: list, foreach: bool | None) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=LR, weight_decay=0.0, foreach=foreach)


def _sgd(momentum: float) -> Callable[[list, "bool | None"], torch.optim.Optimizer]:
    return lambda ps, foreach: torch.optim.SGD(ps, lr=LR, momentum=momentum, foreach=foreach)


def _adafactor(params: list, foreach: bool | None) -> torch.optim.Optimizer:
    from transformers.optimization import Adafactor

    return Adafactor(params, lr=LR, scale_parameter=False, relative_step=False)


def _bnb(name: str) -> Callable[[list, "bool | None"], torch.optim.Optimizer]:
    def make(params: list, foreach: bool | None) -> torch.optim.Optimizer:
        import bitsandbytes.optim as bo

        return getattr(bo, name)(params, lr=LR, weight_decay=0.0)

    return make


# Trainer ``optim`` name -> optimizer factory. Paged optimizers are traced as their unpaged twin;
# their states live in unified memory, outside the CUDA allocator (see PAGED).
OPTIMIZERS: dict[str, Callable[[list, "bool | None"], torch.optim.Optimizer]] = {
    "adamw_torch": _adamw,
    "adamw_torch_fused": lambda ps, foreach: torch.optim.AdamW(ps, lr=LR, weight_decay=0.0, fused=True),
    "adamw_hf": _adamw,
    "adamw": _adamw,
    "sgd": _sgd(0.0),
    "sgd_momentum": _sgd(0.9),
    "adafactor": _adafactor,
    "adamw_bnb_8bit": _bnb("AdamW8bit"),
    "adamw_8bit": _bnb("AdamW8bit"),
    "paged_adamw_8bit": _bnb("AdamW8bit"),
    "paged_adamw_32bit": _bnb("AdamW"),
    "paged_adamw": _bnb("AdamW"),
}
PAGED = frozenset({"paged_adamw_8bit", "paged_adamw_32bit", "paged_adamw"})


def make_optimizer(name: str, params: Iterable[torch.Tensor], *, foreach: bool = True) -> torch.optim.Optimizer:
    """The optimizer Trainer builds for ``name``; ``foreach=True`` as on CUDA, False = torch's CPU default."""
    try:
        factory = OPTIMIZERS[name]
    except KeyError:
        raise InvalidSettingError(f"the trace does not know optimizer {name!r}; known: "
                                  f"{', '.join(sorted(OPTIMIZERS))}") from None
    return factory(list(params), True if foreach else None)


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def prime_optimizer(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
    """Create the optimizer states as a first step would, without running a first forward/backward.

    A first Trainer step only matters for memory by leaving optimizer states behind; zero
    gradients give the same states at half the cost of tracing two steps.
    """
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def run_training_steps(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    steps: int = 2,
    autocast_dtype: torch.dtype | None = None,
    foreach: bool = True,
    on_phase: Callable[[str], None] = lambda phase: None,
    after_backward: Callable[[], None] = lambda: None,
    after_step: Callable[[], None] = lambda: None,
) -> None:
    """Run ``steps`` Trainer steps; the callbacks let a tracker label phases and tensors."""
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    for _ in range(steps):
        on_phase("forward")
        amp = torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
        with amp:
            loss = model(**batch).loss  # Trainer.compute_loss keeps only the loss
        on_phase("backward")
        loss.backward()
        del loss
        after_backward()
        on_phase("optimizer_step")
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True if foreach else None)
        optimizer.step()
        after_step()
        optimizer.zero_grad(set_to_none=True)
    on_phase("done")
