"""The objective the Trainer optimizes: what ``Trainer.training_step`` returns, micro-batch by micro-batch.

``Trainer._inner_training_loop`` adds each micro-batch's ``training_step(...)`` return value to
``tr_loss`` and logs their sum per optimizer step as ``loss``. That value is the trainer's own
objective whatever the trainer is: the token loss for ``Trainer`` and ``SFTTrainer``, the DPO loss
(not the reference forward, which runs under no_grad inside ``compute_loss``), the GRPO objective
(not the fused head's token NLL that the model's forward also returns). Hooking the model's forward
instead would count every training-mode forward, including no-grad ones.

The tap wraps ``training_step`` on the Trainer instance (an instance attribute, removed on detach)
and hands each returned loss (detached, still on the device: no sync) to a recorder. The Trainer
is found on the call stack when the callback's ``on_train_begin`` runs, the way
:func:`lora_doctor.callback.glue.find_callback_handler` finds the handler.
"""

from __future__ import annotations

from typing import Any, Callable

MAX_STACK_DEPTH = 64


def find_trainer(max_depth: int = MAX_STACK_DEPTH) -> Any:
    """The ``transformers.Trainer`` whose code is on the call stack (None if there is none)."""
    from transformers import Trainer

    from .glue import find_on_stack

    return find_on_stack(Trainer, max_depth)


class TrainingStepTap:
    """Calls ``record(loss)`` with every value ``trainer.training_step`` returns, until ``remove()``."""

    def __init__(self, trainer: Any, record: Callable[[Any], None], errors: list[BaseException]) -> None:
        self.trainer = trainer
        self._had_own = "training_step" in vars(trainer)
        self._original = trainer.training_step
        original, self._active = self._original, True

        def training_step(*args: Any, **kwargs: Any) -> Any:
            loss = original(*args, **kwargs)
            if self._active:
                try:
                    record(loss)
                except Exception as exc:   # never break training
                    errors.append(exc)
            return loss

        trainer.training_step = training_step

    def remove(self) -> None:
        self._active = False
        if self._had_own:
            self.trainer.training_step = self._original
        else:
            self.trainer.__dict__.pop("training_step", None)


def tap_training_step(record: Callable[[Any], None], errors: list[BaseException]) -> TrainingStepTap | None:
    """Tap the Trainer on the call stack; None when there is none (the caller falls back)."""
    trainer = find_trainer()
    return TrainingStepTap(trainer, record, errors) if trainer is not None else None
