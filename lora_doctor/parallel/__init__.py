"""The parallelism axis: how many GPUs, and how DDP / FSDP / DeepSpeed ZeRO split the model states.

``make_parallel`` validates what a user gave ``plan()``; :func:`per_gpu` takes the single-GPU
engine's phases and returns what one GPU holds under the strategy (``peak_bytes`` of a plan is
always per GPU). One module per strategy family: :mod:`.ddp`, :mod:`.fsdp`, :mod:`.zero`; launch
configs (TrainingArguments, DeepSpeed JSON, accelerate YAML) are read by :mod:`.launch`.
"""

from __future__ import annotations

from typing import Any, Callable

from ..arch import ArchSpec
from ..errors import InvalidSettingError
from ..memory.persistent import Persistent
from ..plan_types import OFFLOADS, STRATEGIES, ParallelSettings, PlanSettings
from .context import Context
from .ddp import ddp
from .fsdp import fsdp
from .result import PerGpu
from .zero import zero

__all__ = ["OFFLOAD_SUPPORT", "PerGpu", "make_parallel", "per_gpu"]

_SPLITTERS: dict[str, Callable[[Context], PerGpu]] = {
    "ddp": ddp, "fsdp": fsdp, "fsdp_grad_op": fsdp, "zero1": zero, "zero2": zero, "zero3": zero,
}
# Which offload each strategy supports, and what to use instead.
OFFLOAD_SUPPORT: dict[str, tuple[str, ...]] = {
    "ddp": (), "fsdp": ("all",), "fsdp_grad_op": ("all",),
    "zero1": ("optimizer",), "zero2": ("optimizer",), "zero3": ("optimizer", "all"),
}
_OFFLOAD_FIX = {
    "ddp": "DDP cannot offload: use zero2/zero3 or fsdp",
    "fsdp": "FSDP's CPU offload moves parameters, gradients and the optimizer together: use offload='all'",
    "zero1": "ZeRO-1/2 offload only the optimizer: use offload='optimizer', or zero3 for 'all'",
}
# Options a strategy understands (bucket sizes etc.); anything else is a typo.
KNOWN_OPTIONS = frozenset({
    "gradient_as_bucket_view", "bucket_cap_mb", "quant_storage", "gpus_per_node", "overlap_comm",
    "reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size",
    "stage3_param_persistence_threshold", "stage3_max_live_parameters",
})


def make_parallel(num_gpus: int | None = None, strategy: str | None = None, offload: str | None = None,
                  *, gpu_count: int = 1, **options: Any) -> ParallelSettings:
    """Validate the parallel axis. ``num_gpus`` defaults to the GPU spec's count (``--gpu 8xH100``)."""
    n = gpu_count if num_gpus is None else num_gpus
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidSettingError(f"num_gpus must be a positive integer, got {num_gpus!r}")
    if strategy is not None and strategy not in STRATEGIES:
        raise InvalidSettingError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if offload is not None and offload not in OFFLOADS:
        raise InvalidSettingError(f"offload must be None or one of {', '.join(OFFLOADS)}, got {offload!r}")
    unknown = sorted(set(options) - KNOWN_OPTIONS)
    if unknown:
        raise InvalidSettingError(f"unknown parallel option(s) {', '.join(unknown)}; known: "
                                  f"{', '.join(sorted(KNOWN_OPTIONS))}")
    if n == 1 and strategy is None and offload is None and not options:
        return ParallelSettings()
    strategy = strategy or "ddp"
    if offload is not None and offload not in OFFLOAD_SUPPORT[strategy]:
        fix = _OFFLOAD_FIX.get(strategy) or _OFFLOAD_FIX["zero1" if strategy.startswith("zero") else "fsdp"]
        raise InvalidSettingError(f"{strategy} does not support offload={offload!r}: {fix}")
    return ParallelSettings(num_gpus=n, strategy=strategy, offload=offload, options=tuple(sorted(options.items())))


def per_gpu(arch: ArchSpec, s: PlanSettings, pers: Persistent, phases: dict[str, dict[str, int]],
            device: str = "cuda") -> PerGpu:
    """Every phase's breakdown on one GPU under ``s.parallel``; the input is the single-GPU one."""
    if s.parallel.strategy is None:
        return PerGpu(phases, None, ())
    return _SPLITTERS[s.parallel.strategy](Context(arch, s, pers, phases, device))
