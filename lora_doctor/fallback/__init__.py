"""Fall back to QLoRA and the other memory levers when the plan predicts an OOM (see docs/fallback.md).

Importing this package imports torch lazily: only ``decision`` is pure; ``load``, ``convert`` and
``oom`` import torch / transformers / bitsandbytes when their functions run or the module loads.
"""

from .decision import FallbackDecision, FallbackStep, decide
from .load import load_for_training, plan_fallback

__all__ = ["FallbackDecision", "FallbackStep", "decide", "load_for_training", "plan_fallback"]
