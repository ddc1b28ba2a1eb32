"""Exceptions raised by lora-doctor.

Every error the library raises on bad input derives from :class:`LoraDoctorError`, so a caller can
catch one class; the CLI turns each into one readable line and exit code 2. The tree::

    LoraDoctorError
    ├── ModelNotFoundError      (also LookupError)  unknown hub id / missing path, offline
    ├── UnsupportedModelError   (also ValueError)   an architecture the planner cannot model
    │   └── InvalidConfigError                      a config.json that is not a valid, sane config
    ├── InvalidSettingError     (also ValueError)   a bad size, rank, dtype, optimizer, mode ...
    │   └── InvalidGpuError                         a GPU spec that cannot be parsed
    ├── GpuNotAvailableError    (also RuntimeError) ``gpu="auto"`` without a visible GPU / NVML
    ├── WontFitError            (also RuntimeError) nothing fits; carries the plan that says so
    └── TrainingOutOfMemoryError (also torch.OutOfMemoryError) raised by ``oom_guard``; defined in
                                 lora_doctor.fallback.oom so this module does not import torch
"""

from __future__ import annotations

from typing import Any


class LoraDoctorError(Exception):
    """Base class of every error lora-doctor raises on purpose."""


class ModelNotFoundError(LoraDoctorError, LookupError):
    """The model could not be resolved to a config (not in the catalog, cache, or on disk)."""


class UnsupportedModelError(LoraDoctorError, ValueError):
    """The model's architecture cannot be built or modelled."""


class InvalidConfigError(UnsupportedModelError):
    """A model config that cannot be read or whose values are absurd (binary file, not an object, a
    size out of range, NaN, custom code); the message names the field."""


class InvalidSettingError(LoraDoctorError, ValueError):
    """A planning or check setting is out of range or unknown."""


class InvalidGpuError(InvalidSettingError):
    """A GPU specification that is neither a size nor a known GPU name."""


class GpuNotAvailableError(LoraDoctorError, RuntimeError):
    """``gpu="auto"`` was requested but no GPU could be queried."""


class WontFitError(LoraDoctorError, RuntimeError):
    """No configuration the tool tried fits on the GPU; ``.plan`` holds the closest one."""

    def __init__(self, message: str, plan: Any = None) -> None:
        super().__init__(message)
        self.plan = plan
