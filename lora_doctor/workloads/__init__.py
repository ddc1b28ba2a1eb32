"""The trainer axis: what one step of a plain Trainer or a TRL trainer does.

``make_workload`` validates the trainer settings a user gave ``plan()``; the engines read the
resulting :class:`~lora_doctor.plan_types.WorkloadSettings`.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidSettingError
from ..plan_types import TRAINERS, WorkloadSettings

# Trainers whose step the engines model today; the others are rejected rather than planned wrongly.
MODELLED_TRAINERS = ("hf",)


def make_workload(trainer: str = "hf", fused_lm_head: bool | None = None, **options: Any) -> WorkloadSettings:
    """Validate the trainer axis; unknown trainers and options are one clear error."""
    if not isinstance(trainer, str) or trainer.lower() not in TRAINERS:
        raise InvalidSettingError(f"trainer must be one of {', '.join(TRAINERS)}, got {trainer!r}")
    trainer = trainer.lower()
    if trainer not in MODELLED_TRAINERS:
        raise InvalidSettingError(f"trainer={trainer!r} is not modelled yet; plan with trainer='hf'")
    if fused_lm_head is not None and not isinstance(fused_lm_head, bool):
        raise InvalidSettingError(f"fused_lm_head must be True, False or None, got {fused_lm_head!r}")
    if options:
        raise InvalidSettingError(f"unknown trainer options for {trainer!r}: {', '.join(sorted(options))}")
    return WorkloadSettings(trainer=trainer, fused_lm_head=fused_lm_head)
