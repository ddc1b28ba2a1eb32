"""The input axis: images and audio per sample, for vision-language and speech models.

``make_inputs`` validates what a user gave ``plan()``; the engines read the resulting
:class:`~lora_doctor.plan_types.InputSettings`.
"""

from __future__ import annotations

from .errors import InvalidSettingError
from .plan_types import InputSettings


def make_inputs(images_per_sample: int = 0, image_size: "tuple[int, int] | None" = None,
                image_tokens: int | None = None, audio_seconds: float | None = None) -> InputSettings:
    """Validate the input axis; text-only today, other inputs are rejected rather than planned wrongly."""
    if isinstance(images_per_sample, bool) or not isinstance(images_per_sample, int) or images_per_sample < 0:
        raise InvalidSettingError(f"images_per_sample must be a non-negative integer, got {images_per_sample!r}")
    if images_per_sample or image_size is not None or image_tokens is not None or audio_seconds is not None:
        raise InvalidSettingError("image and audio inputs are not modelled yet; plan text only")
    return InputSettings()
