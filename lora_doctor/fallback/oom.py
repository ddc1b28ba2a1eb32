"""``oom_guard(trainer)``: a real out-of-memory during training ends with a diagnosis, not a bare OOM.

    with lora_doctor.oom_guard(trainer):
        trainer.train()

On ``torch.OutOfMemoryError`` the guard gathers what was measured so far (``torch.cuda`` memory
statistics when CUDA is available), plans the run the Trainer holds (model, micro-batch and sequence
length of the last forward pass, ``TrainingArguments``) and raises :class:`TrainingOutOfMemoryError`,
which is both a ``LoraDoctorError`` and a ``torch.OutOfMemoryError`` (so existing ``except`` clauses
still catch it), chained to the original. If the diagnosis itself fails, the original error is
re-raised with a note attached.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

from ..errors import LoraDoctorError
from ..units import format_bytes


class TrainingOutOfMemoryError(LoraDoctorError, torch.OutOfMemoryError):
    """Training ran out of device memory; ``.plan``, ``.measured`` and the message say what to change."""

    def __init__(self, message: str, plan: Any = None, measured: dict[str, int] | None = None) -> None:
        super().__init__(message)
        self.plan = plan
        self.measured = measured or {}


def measured_memory() -> dict[str, int]:
    """What CUDA measured so far (empty without CUDA)."""
    if not torch.cuda.is_available():
        return {}
    stats = torch.cuda.memory_stats()
    free, total = torch.cuda.mem_get_info()
    return {"allocated_bytes": int(stats.get("allocated_bytes.all.current", 0)),
            "peak_allocated_bytes": int(stats.get("allocated_bytes.all.peak", 0)),
            "reserved_bytes": int(stats.get("reserved_bytes.all.current", 0)),
            "peak_reserved_bytes": int(stats.get("reserved_bytes.all.peak", 0)),
            "device_used_bytes": int(total - free), "device_total_bytes": int(total)}


def plan_for_trainer(trainer: Any, batch: int | None, seq_len: int | None, gpu: Any) -> Any:
    """The planner on the Trainer's model and arguments (same settings as the callback's pre-flight)."""
    from ..callback.lora_stats import summarize
    from ..callback.preflight import _local_gpu, plan_settings
    from ..planner import plan

    model, args = trainer.model, trainer.args
    settings = plan_settings(model, args, summarize(model), batch, seq_len)
    settings.setdefault("seq_len", 512)
    return plan(model, gpu=_local_gpu(gpu), **settings)


def diagnosis(plan: Any, measured: dict[str, int], exc: BaseException) -> str:
    """The message: what was measured, what was predicted, what to change."""
    lines = [f"training ran out of device memory ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})."]
    if measured:
        lines.append("measured so far: " + ", ".join(f"{k.replace('_bytes', '').replace('_', ' ')} "
                                                     f"{format_bytes(v)}" for k, v in measured.items()))
    if plan is not None:
        s = plan.settings
        terms = ", ".join(f"{k.replace('_', ' ')} {format_bytes(v)}"
                          for k, v in sorted(plan.breakdown.items(), key=lambda kv: -kv[1]) if v)
        lines.append(f"predicted device peak {format_bytes(plan.device_peak_bytes)} for {s.mode}, micro-batch "
                     f"{s.batch_size}, seq_len {s.seq_len}: {terms}.")
        lines.append(f"what to change: {plan.recommendation}")
        lines.append("or load with lora_doctor.load_for_training(...) / LoraDoctorCallback(auto_fallback=True), "
                     "which fall back to 4-bit and the other levers on their own.")
    return "\n".join(lines)


def _shape_recorder(model: Any, seen: dict[str, int]) -> Any:
    from ..callback.probes import batch_shape

    def record(_module: Any, args: tuple, kwargs: dict) -> None:
        shape = batch_shape(args, kwargs)
        if shape:
            seen["batch"], seen["seq_len"] = shape
    return model.register_forward_pre_hook(record, with_kwargs=True)


@contextmanager
def oom_guard(trainer: Any, *, gpu: Any = None) -> Iterator[None]:
    """Turn a ``torch.OutOfMemoryError`` inside the block into a :class:`TrainingOutOfMemoryError`.

    ``gpu``: the GPU to plan against (default: the local one; with none, the plan has no verdict).
    """
    seen: dict[str, int] = {}
    handle = _shape_recorder(trainer.model, seen)
    try:
        yield
    except torch.OutOfMemoryError as exc:
        if isinstance(exc, TrainingOutOfMemoryError):
            raise
        measured = measured_memory()
        try:
            plan = plan_for_trainer(trainer, seen.get("batch"), seen.get("seq_len"), gpu)
            message = diagnosis(plan, measured, exc)
        except Exception as failure:   # never hide the OOM behind our own error
            exc.add_note(f"lora-doctor could not diagnose this OOM ({type(failure).__name__}: {failure})")
            message = None
        if message is None:
            raise
        raise TrainingOutOfMemoryError(message, plan, measured) from exc
    finally:
        handle.remove()
