"""The Trainer callback: pre-flight checks and live training diagnostics (see docs/callback.md)."""

from .callback import LoraDoctorCallback, LoraDoctorWarning
from .console import DoctorConsole
from .health import SpikeRule
from .monitor import Thresholds

__all__ = ["DoctorConsole", "LoraDoctorCallback", "LoraDoctorWarning", "SpikeRule", "Thresholds"]
