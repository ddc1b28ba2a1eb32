"""Small facts about the running Trainer that callbacks are not handed directly."""

from __future__ import annotations

import inspect
import os
from typing import Any

REPORTING_FIRST = "DefaultFlowCallback"   # our callback goes right after it, before report_to integrations


def find_on_stack(kind: type, max_depth: int) -> Any:
    """The nearest ``self`` of type ``kind`` among the callers' frames (None if not within ``max_depth``)."""
    frame = inspect.currentframe()
    try:
        for _ in range(max_depth):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                return None
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, kind):
                return candidate
        return None
    finally:
        del frame


def find_callback_handler(max_depth: int = 8) -> Any:
    """The ``CallbackHandler`` calling us, found on the call stack (None if not there).

    Callbacks never see the handler, but its order matters: ``on_log`` hands one ``logs`` dict to
    each callback in turn, and the ``report_to`` integrations (TensorBoard, W&B, MLflow) come before
    user callbacks. Moving ourselves ahead of them lets ``doctor/`` metrics reach them.
    """
    from transformers.trainer_callback import CallbackHandler

    return find_on_stack(CallbackHandler, max_depth)


def move_before_reporters(handler: Any, callback: Any) -> bool:
    """Put ``callback`` right after DefaultFlowCallback in ``handler.callbacks`` (in place).

    Safe while the handler is iterating its list: moving an element from index k to an index
    below k keeps every later callback at its index, so none is skipped or called twice.
    """
    callbacks = handler.callbacks
    if callback not in callbacks:
        return False
    names = [type(cb).__name__ for cb in callbacks]
    target = names.index(REPORTING_FIRST) + 1 if REPORTING_FIRST in names else 0
    current = callbacks.index(callback)
    if current > target:
        callbacks.remove(callback)
        callbacks.insert(target, callback)
    return True


def is_logging_step(args: Any, state: Any, step: int) -> bool:
    """Will the Trainer log at the end of optimizer step ``step``? (mirrors DefaultFlowCallback)."""
    strategy = str(getattr(getattr(args, "logging_strategy", ""), "value", getattr(args, "logging_strategy", "")))
    every = getattr(state, "logging_steps", 0) or 0
    return bool((step == 1 and getattr(args, "logging_first_step", False))
                or (strategy == "steps" and every > 0 and step % every == 0)
                or step >= (getattr(state, "max_steps", 0) or float("inf")))


def checkpoint_dir(args: Any, state: Any) -> str:
    """Where the Trainer's ``_save_checkpoint`` writes at the current step."""
    return os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
