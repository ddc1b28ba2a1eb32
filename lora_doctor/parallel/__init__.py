"""The parallelism axis: how many GPUs, and how DDP / FSDP / DeepSpeed ZeRO split the model states.

``make_parallel`` validates what a user gave ``plan()``; the engines read the resulting
:class:`~lora_doctor.plan_types.ParallelSettings`. ``peak_bytes`` of a plan is always per GPU.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidSettingError
from ..plan_types import OFFLOADS, STRATEGIES, ParallelSettings

# Strategies the engines model today; the others are rejected rather than planned wrongly.
MODELLED_STRATEGIES: tuple[str, ...] = ()


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
    if n == 1 and strategy is None and offload is None and not options:
        return ParallelSettings()
    strategy = strategy or "ddp"
    if strategy not in MODELLED_STRATEGIES:
        raise InvalidSettingError(f"multi-GPU planning ({strategy}, {n} GPUs) is not modelled yet; "
                                  "plan one GPU (num_gpus=1)")
    return ParallelSettings(num_gpus=n, strategy=strategy, offload=offload, options=tuple(sorted(options.items())))
