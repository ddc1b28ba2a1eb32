"""Fall back to QLoRA and the other memory levers when the plan predicts an OOM (see docs/fallback.md).

``decision`` and ``load`` are pure at import (torch loads when a model is loaded); ``convert`` and
``oom`` import torch and are imported by name: ``lora_doctor.fallback.convert``.
"""

from .decision import FallbackDecision, FallbackStep, decide
from .load import load_for_training, plan_fallback

__all__ = ["FallbackDecision", "FallbackStep", "decide", "load_for_training", "plan_fallback"]
