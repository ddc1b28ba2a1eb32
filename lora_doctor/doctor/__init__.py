"""The config doctor: pre-flight checks of target_modules, scaling, initialization, dtypes and tokenizer.

Public entry points are :func:`diagnose` and :func:`check_merge`; both return a :class:`DoctorReport`
whose findings carry a code documented in ``docs/checks.md`` (see :data:`registry.REGISTRY`).
"""

from .checkup import diagnose
from .merge import check_merge
from .registry import REGISTRY
from .report import DoctorReport

__all__ = ["REGISTRY", "DoctorReport", "check_merge", "diagnose"]
