"""The trainer axis: what one step of a plain Trainer or a TRL trainer does.

``make_workload`` validates the trainer settings a user gave ``plan()``, fills in the installed TRL
version's defaults (:mod:`.trl_defaults`) and returns a
:class:`~lora_doctor.plan_types.WorkloadSettings`; the analytic engine turns it into phases with
:mod:`lora_doctor.memory.workload` (one module per trainer: :mod:`.sft`, :mod:`.dpo`, :mod:`.grpo`).

Options keep TRL's own names (``max_length``, ``packing``, ``num_generations``, ...), so a value read
from an ``SFTConfig`` / ``DPOConfig`` / ``GRPOConfig`` passes through unchanged.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import InvalidSettingError
from ..plan_types import TRAINERS, WorkloadSettings
from .trl_defaults import defaults_for, installed_trl_version

MODELLED_TRAINERS = TRAINERS
TRL_VERSION_OPTION = "trl_version"   # the installed TRL version the defaults were read for ("" = absent)


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _optional_positive_int(v: Any) -> bool:
    return v is None or _positive_int(v)


def _flag(v: Any) -> bool:
    return isinstance(v, bool)


def _fraction(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1


def _non_negative(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0


# option -> (validator, what it must be): one table for every trainer.
OPTION_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "max_length": (_optional_positive_int, "a positive integer or None"),
    "max_completion_length": (_positive_int, "a positive integer"),
    "num_generations": (_positive_int, "a positive integer"),
    "generation_batch_size": (_optional_positive_int, "a positive integer or None"),
    "steps_per_generation": (_optional_positive_int, "a positive integer or None"),
    "beta": (_non_negative, "a number >= 0"),
    "vllm_gpu_memory_utilization": (_fraction, "a fraction in (0, 1]"),
    "vllm_mode": (lambda v: v in ("colocate", "server"), "'colocate' or 'server'"),
    **{name: (_flag, "True or False") for name in (
        "packing", "padding_free", "activation_offloading", "use_liger_kernel", "precompute_ref_log_probs",
        "use_vllm", "disable_dropout")},
}


def make_workload(trainer: str = "hf", fused_lm_head: bool | None = None, **options: Any) -> WorkloadSettings:
    """Validate the trainer axis; unknown trainers and options are one clear error (all problems at once)."""
    if not isinstance(trainer, str) or trainer.lower() not in TRAINERS:
        raise InvalidSettingError(f"trainer must be one of {', '.join(TRAINERS)}, got {trainer!r}")
    trainer = trainer.lower()
    if fused_lm_head is not None and not isinstance(fused_lm_head, bool):
        raise InvalidSettingError(f"fused_lm_head must be True, False or None, got {fused_lm_head!r}")
    version = installed_trl_version() if trainer != "hf" else None
    defaults, _ = defaults_for(version)
    known = defaults.options[trainer]
    problems = []
    unknown = sorted(set(options) - set(known))
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        problems.append(f"unknown options for trainer={trainer!r}: {', '.join(unknown)} (it takes: {allowed})")
    for name, value in options.items():
        check = OPTION_CHECKS.get(name)
        if name in known and check and not check[0](value):
            problems.append(f"{name} must be {check[1]}, got {value!r}")
    if problems:
        raise InvalidSettingError("; ".join(problems))
    resolved = {**known, **options}
    if trainer != "hf":
        resolved[TRL_VERSION_OPTION] = version or ""
    return WorkloadSettings(trainer=trainer, fused_lm_head=fused_lm_head, options=tuple(sorted(resolved.items())))
