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
from .findings import Finding
from .gpus import GpuSpec, parse_gpu
from .plan_types import MemoryPlan, PlanSettings
from .planner import plan

__version__ = "0.1.0"

__all__ = [
    "DoctorReport",
    "Finding",
    "GpuNotAvailableError",
    "GpuSpec",
    "InvalidGpuError",
    "InvalidSettingError",
    "LoraDoctorError",
    "MemoryPlan",
    "ModelNotFoundError",
    "PlanSettings",
    "UnsupportedModelError",
    "WontFitError",
    "check_merge",
    "diagnose",
    "parse_gpu",
    "plan",
]
