"""Measured GPU memory (PyTorch allocator peaks, NVML device use) and how it compares with the plan.

Reading never raises and never syncs the GPU: ``torch.cuda.max_memory_allocated`` and
``max_memory_reserved`` read the caching allocator's counters, NVML asks the driver. Without CUDA,
NVML or a GPU every field is None. :func:`judge_memory` is pure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..findings import Finding
from ..units import format_bytes

PLAN_TOLERANCE = 0.10   # warn when the measured peak is off the plan by more than this fraction
MIN_HEADROOM = 0.05     # warn when less than this fraction of the GPU's memory is left


@dataclass(frozen=True)
class MemoryReading:
    """Peaks since training began, in bytes; None where the source is unavailable."""

    allocated_peak: int | None = None   # torch.cuda.max_memory_allocated: live tensors
    reserved_peak: int | None = None    # torch.cuda.max_memory_reserved: the caching allocator's pool
    device_used: int | None = None      # NVML: this process on the device (or the whole device)
    capacity: int | None = None         # NVML / torch: total memory of the device

    @property
    def measured(self) -> bool:
        return self.allocated_peak is not None


class MemoryMeter:
    """Reads one CUDA device. Safe to construct and call anywhere."""

    def __init__(self, device: Any = None) -> None:
        self.index = self._index(device)
        self._nvml: Any = None
        self._handle: Any = None
        self._nvml_tried = False

    @staticmethod
    def _index(device: Any) -> int | None:
        try:
            import torch

            if not torch.cuda.is_available():
                return None
            dev = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
            return None if dev.type != "cuda" else (dev.index if dev.index is not None else torch.cuda.current_device())
        except Exception:
            return None

    def _nvml_handle(self) -> Any:
        if not self._nvml_tried:
            self._nvml_tried = True
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
                self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.index or 0)
            except Exception:
                self._nvml = self._handle = None
        return self._handle

    def _nvml_used(self) -> tuple[int | None, int | None]:
        handle = self._nvml_handle()
        if handle is None:
            return None, None
        nvml = self._nvml
        try:
            info = nvml.nvmlDeviceGetMemoryInfo(handle)
            used = int(info.used)
            try:
                mine = [p.usedGpuMemory for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)
                        if p.pid == os.getpid() and p.usedGpuMemory]
                used = int(mine[0]) if mine else used
            except Exception:
                pass
            return used, int(info.total)
        except Exception:
            return None, None

    def read(self) -> MemoryReading:
        if self.index is None:
            return MemoryReading()
        try:
            import torch

            allocated = int(torch.cuda.max_memory_allocated(self.index))
            reserved = int(torch.cuda.max_memory_reserved(self.index))
            capacity = int(torch.cuda.get_device_properties(self.index).total_memory)
        except Exception:
            return MemoryReading()
        used, total = self._nvml_used()
        return MemoryReading(allocated, reserved, used, total or capacity)


def plan_error(measured: int | None, planned: int | None) -> float | None:
    """(measured - planned) / planned, None when either is unknown."""
    if not measured or not planned:
        return None
    return (measured - planned) / planned


def judge_memory(reading: MemoryReading, planned_peak: int | None, planned_device_peak: int | None, *,
                 step: int, tolerance: float = PLAN_TOLERANCE, min_headroom: float = MIN_HEADROOM) -> list[Finding]:
    """Compare a reading with the plan: plan off by more than ``tolerance``; headroom under ``min_headroom``."""
    findings = []
    err = plan_error(reading.allocated_peak, planned_peak)
    if err is not None and abs(err) > tolerance:
        findings.append(Finding(
            "memory-plan-off", "warning" if err > 0 else "info",
            f"measured peak {format_bytes(reading.allocated_peak)} (torch.cuda.max_memory_allocated, step {step}) "
            f"is {abs(err):.0%} {'above' if err > 0 else 'below'} the planned {format_bytes(planned_peak)}",
            "trust the measurement for sizing this run; if the plan was much too low, report the model and "
            "settings (lora-doctor plan --json) so the planner can be corrected",
            {"step": step, "measured": reading.allocated_peak, "planned": planned_peak, "error": err,
             "planned_device_peak": planned_device_peak},
        ))
    used = max(v for v in (reading.device_used, reading.reserved_peak, 0) if v is not None)
    if reading.capacity and used:
        headroom = (reading.capacity - used) / reading.capacity
        if headroom < min_headroom:
            findings.append(Finding(
                "memory-headroom-low", "warning",
                f"only {headroom:.1%} of {format_bytes(reading.capacity)} is left at step {step} "
                f"({format_bytes(used)} in use): a longer batch or fragmentation can run out of memory",
                "enable gradient_checkpointing, lower per_device_train_batch_size (raise "
                "gradient_accumulation_steps to keep the effective batch), or lower max_length (TRL configs; the "
                "tokenizer's max_length for a plain Trainer)",
                {"step": step, "used": used, "capacity": reading.capacity, "headroom": headroom},
            ))
    return findings


def memory_metrics(reading: MemoryReading, planned_peak: int | None) -> dict[str, float]:
    """``doctor/memory_*`` entries for the Trainer's logs (GiB), only those that are known."""
    gib = 1024**3
    values = {
        "doctor/memory_allocated_peak_gib": reading.allocated_peak,
        "doctor/memory_reserved_peak_gib": reading.reserved_peak,
        "doctor/memory_device_used_gib": reading.device_used,
        "doctor/memory_planned_peak_gib": planned_peak if reading.measured else None,
    }
    out = {k: v / gib for k, v in values.items() if v is not None}
    err = plan_error(reading.allocated_peak, planned_peak)
    if err is not None:
        out["doctor/memory_plan_error"] = err
    return out
