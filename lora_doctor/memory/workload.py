"""The trainer axis in the analytic engine: which step model plans ``settings.workload.trainer``.

``hf`` is the plain ``transformers.Trainer`` step of :func:`lora_doctor.memory.analytic.step_peak`;
TRL trainers are modelled in :mod:`lora_doctor.workloads` (one module each), on top of it.
"""

from __future__ import annotations

from typing import Callable

from ..arch import ArchSpec
from ..plan_types import PlanSettings
from .analytic import PhaseTotals, step_peak


def _models() -> dict[str, Callable[[ArchSpec, PlanSettings, str], PhaseTotals]]:
    from ..workloads.dpo import dpo_totals
    from ..workloads.grpo import grpo_totals
    from ..workloads.sft import sft_totals

    return {"hf": lambda arch, s, device: step_peak(arch, s, device=device),
            "sft": sft_totals, "dpo": dpo_totals, "grpo": grpo_totals}


def workload_peak(arch: ArchSpec, s: PlanSettings, device: str = "cuda") -> PhaseTotals:
    """Phases and peak of one step of the trainer in ``s.workload``."""
    return _models()[s.workload.trainer](arch, s, device)


def device_reserves(s: PlanSettings) -> tuple[dict[str, int], list[str]]:
    """Device memory a workload holds outside PyTorch's allocator (vLLM colocate), and notes."""
    from ..workloads.grpo import vllm_reserve_fraction

    fraction = vllm_reserve_fraction(s)
    if not fraction:
        return {}, []
    gpu_bytes = s.workload.option("gpu_memory_bytes")
    if not gpu_bytes:
        return {}, [f"vLLM colocate reserves vllm_gpu_memory_utilization={fraction} of the GPU: not counted "
                    "without a GPU (pass gpu= / --gpu)"]
    return {"vllm_reserve": int(fraction * gpu_bytes)}, []
