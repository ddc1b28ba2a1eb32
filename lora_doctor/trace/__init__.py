"""The traced planner: run one real training step on fake tensors and measure its peak.

``trace_step`` builds the real ``transformers`` model (with real peft adapters and bitsandbytes
4-bit layers) under ``FakeTensorMode``, runs what ``Trainer`` runs for a step, and replays a log of
every storage allocation; ``trace_plan`` turns that into a :class:`~lora_doctor.MemoryPlan`.
"""

from .engine import plan_from_trace, trace_plan
from .run import TopTensor, TraceResult, trace_step

__all__ = ["TopTensor", "TraceResult", "plan_from_trace", "trace_plan", "trace_step"]
