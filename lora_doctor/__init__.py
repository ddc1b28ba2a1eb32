"""lora-doctor: will this fine-tuning run fit, is the LoRA config sane, is training healthy."""

from .errors import (
    GpuNotAvailableError,
    InvalidGpuError,
    InvalidSettingError,
    LoraDoctorError,
    ModelNotFoundError,
    UnsupportedModelError,
    WontFitError,
)
from .doctor import DoctorReport, check_merge, diagnose
from .fallback.decision import FallbackDecision
from .findings import Finding
from .gpus import GpuSpec, parse_gpu
from .plan_types import MemoryPlan, PlanSettings
from .planner import plan

__version__ = "0.1.0"

__all__ = [
    "DoctorReport",
    "FallbackDecision",
    "Finding",
    "GpuNotAvailableError",
    "GpuSpec",
    "InvalidGpuError",
    "InvalidSettingError",
    "LoraDoctorCallback",
    "LoraDoctorError",
    "MemoryPlan",
    "ModelNotFoundError",
    "PlanSettings",
    "UnsupportedModelError",
    "WontFitError",
    "check_merge",
    "diagnose",
    "load_for_training",
    "oom_guard",
    "parse_gpu",
    "plan",
]


def __getattr__(name: str):
    """Exports that import torch/transformers load on first use, so ``import lora_doctor`` stays light."""
    if name == "LoraDoctorCallback":
        from .callback import LoraDoctorCallback

        return LoraDoctorCallback
    if name == "load_for_training":
        from .fallback.load import load_for_training

        return load_for_training
    if name == "oom_guard":
        from .fallback.oom import oom_guard

        return oom_guard
    raise AttributeError(f"module 'lora_doctor' has no attribute {name!r}")
