"""lora-doctor: will this fine-tuning run fit, is the LoRA config sane, is training healthy."""

from .errors import (
    GpuNotAvailableError,
    InvalidConfigError,
    InvalidGpuError,
    InvalidSettingError,
    LoraDoctorError,
    ModelNotFoundError,
    UnsupportedModelError,
    WontFitError,
)
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
    "InvalidConfigError",
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
    "plan_trainer",
]


# Exports loaded on first use, so ``import lora_doctor`` (and the plan CLI) stays light: name -> module.
_LAZY = {
    "LoraDoctorCallback": "callback",
    "DoctorReport": "doctor",
    "check_merge": "doctor",
    "diagnose": "doctor",
    "load_for_training": "fallback.load",
    "oom_guard": "fallback.oom",
    "plan_trainer": "workloads.trainer",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lora_doctor' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
