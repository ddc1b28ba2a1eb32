"""Per-step readings taken with hooks, buffered on the device, copied to the host in one go.

The Trainer only hands callbacks ``grad_norm`` and an averaged ``loss`` at logging steps, and by
``on_pre_optimizer_step`` the gradients are already clipped. So:

* :class:`GradProbe` registers ``register_post_accumulate_grad_hook`` on every trainable parameter and
  takes the norm of each gradient as it finishes accumulating, *before* the Trainer clips it. The
  sum of squares over all parameters is the Trainer's pre-clip ``grad_norm`` (same parameters, same
  gradients); per parameter it says which module spiked. Under fp16 loss scaling they are divided by
  the scale in effect during backward. Several ranks:

  - DDP: the hooks see the rank's own gradients (the all-reduce has not landed yet); their total is
    kept as the rank's *local* norm. With ``after_backward`` set, a callback queued on the autograd
    engine runs after DDP's own end-of-backward callback (which writes the averaged gradients) and
    takes the per-parameter norms again: those are the Trainer's global pre-clip norms.
  - FSDP2: the hooks fire after the reduce-scatter, on DTensor gradients; the norm of the local
    shard is taken (``to_local()``, no collective), and the squares add up across ranks.
* :class:`LossProbe` is a forward hook on the model that keeps ``outputs.loss`` of each training
  micro-batch (the Trainer's logged loss is an average over the logging interval, and with
  ``logging_nan_inf_filter`` it hides NaN).

Nothing here calls ``.item()``: values stay on the device until :meth:`drain`, one stack and one copy.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

Drained = list[tuple[int, list[float]]]
# (several ranks, reduced gradients read) -> how a step's norm combines across ranks (lora_doctor.callback.vote)
GRAD_KINDS_BY_MODE = {(False, False): "global", (False, True): "global", (True, True): "global", (True, False): "local"}


def local_tensor(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(the rank's own part of ``t``, whether ``t`` was sharded): a DTensor's local shard, else ``t``."""
    to_local = getattr(t, "to_local", None)
    return (to_local(), True) if callable(to_local) else (t, False)


def _queue_after_backward(fn: Callable[[], None]) -> None:
    """Run ``fn`` at the end of the current backward pass, after every callback queued so far there."""
    engine = torch.autograd.Variable._execution_engine
    engine.queue_callback(lambda: engine.queue_callback(fn))


def _to_host(pending: list[tuple[int, torch.Tensor]]) -> Drained:
    if not pending:
        return []
    device = pending[0][1].device
    values = torch.stack([v.to(device) for _, v in pending]).cpu().tolist()
    return [(step, row if isinstance(row, list) else [row]) for (step, _), row in zip(pending, values)]


class GradProbe:
    """Pre-clip gradient norm of each trainable parameter, per optimizer step."""

    def __init__(self, named_params: list[tuple[str, torch.nn.Parameter]], *, after_backward: bool = False) -> None:
        self.names = [n for n, _ in named_params]
        self._params = [p for _, p in named_params]
        self.after_backward = after_backward   # several ranks: read the reduced gradients at the end of backward
        self.sharded = False                   # the gradients were DTensors (FSDP2): norms are of local shards
        self._current: dict[int, torch.Tensor] = {}
        self._reduced: dict[int, torch.Tensor] = {}
        self._queued = False
        self._reduced_seen = False
        self._pending: list[tuple[int, torch.Tensor]] = []
        self._handles: list[Any] = []
        self.errors: list[BaseException] = []

    @property
    def kind(self) -> str:
        """How this rank's step norms combine across ranks: "global", "shard" (add squares) or "local"."""
        return "shard" if self.sharded else GRAD_KINDS_BY_MODE[(self.after_backward, self._reduced_seen)]

    def __len__(self) -> int:
        return len(self.names)

    def attach(self) -> None:
        for i, p in enumerate(self._params):
            self._handles.append(p.register_post_accumulate_grad_hook(self._hook(i)))

    def _hook(self, i: int) -> Callable[[torch.Tensor], None]:
        def record(param: torch.Tensor) -> None:
            try:
                if param.grad is not None:
                    grad, sharded = local_tensor(param.grad.detach())
                    self.sharded = self.sharded or sharded
                    self._current[i] = torch.linalg.vector_norm(grad, dtype=torch.float32)
                    if self.after_backward and not sharded and not self._queued:
                        self._queued = True
                        _queue_after_backward(self._read_reduced)
            except Exception as exc:   # never break backward
                self.errors.append(exc)
        return record

    def _read_reduced(self) -> None:
        """End of backward, after DDP wrote the averaged gradients: their per-parameter norms."""
        self._queued = False
        try:
            for i, p in enumerate(self._params):
                if p.grad is not None and i in self._current:
                    self._reduced[i] = torch.linalg.vector_norm(p.grad.detach(), dtype=torch.float32)
            self._reduced_seen = True
        except Exception as exc:   # an exception here would escape from loss.backward()
            self.errors.append(exc)

    def end_step(self, step: int, scale: torch.Tensor | None = None) -> None:
        """Close one optimizer step: stack the norms seen since the last call (on the device).

        The row holds one norm per parameter (the reduced gradients' where read) and, last, the norm of
        this rank's own gradients."""
        if not self._current:
            return
        device = next(iter(self._current.values())).device
        zero = torch.zeros((), device=device)
        own = [self._current.get(i, zero).to(device) for i in range(len(self._params))]
        shown = [self._reduced.get(i, v).to(device) for i, v in enumerate(own)] if self._reduced else own
        row = torch.cat([torch.stack(shown), torch.linalg.vector_norm(torch.stack(own)).reshape(1)])
        if scale is not None:
            row = row / scale.to(device)
        self._pending.append((step, row))
        self._current, self._reduced = {}, {}

    def drain(self) -> list[tuple[int, list[float], float]]:
        """(step, per-parameter norms, this rank's own total norm) per buffered step."""
        out, self._pending = _to_host(self._pending), []
        return [(step, row[:-1], row[-1]) for step, row in out]

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _loss_of(output: Any) -> torch.Tensor | None:
    loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
    return loss if isinstance(loss, torch.Tensor) and loss.numel() == 1 else None


class LossProbe:
    """The objective of each training micro-batch, combined per optimizer step like the Trainer's logged
    ``loss``: what ``Trainer.training_step`` returns, summed (:mod:`.objective`; DPO's and GRPO's
    objectives, never a no-grad forward). Without a Trainer on the stack: the model's own loss of each
    training-mode forward (summed under ``num_items_in_batch`` normalization, else averaged)."""

    def __init__(self) -> None:
        self._current: list[torch.Tensor] = []
        self._summed = False   # the Trainer passed num_items_in_batch: micro-batch losses are partial sums
        self._pending: list[tuple[int, torch.Tensor]] = []
        self._handle: Any = None
        self._tap: Any = None
        self.errors: list[BaseException] = []

    def attach(self, model: torch.nn.Module) -> None:
        from .objective import tap_training_step

        self._tap = tap_training_step(self._record_objective, self.errors)
        if self._tap is None:
            self._handle = model.register_forward_hook(self._hook, with_kwargs=True)

    @property
    def as_logged(self) -> bool:
        """Values come from ``training_step``: already scaled as the Trainer counts them (``loss *= world_size``
        under ``average_tokens_across_devices``), so no further factor applies."""
        return self._tap is not None

    def _record_objective(self, loss: Any) -> None:
        if isinstance(loss, torch.Tensor):
            self._summed = True   # training_step already scales each micro-batch: the step's loss is the sum
            self._current.append(loss.detach().float().reshape(()))

    def _hook(self, module: torch.nn.Module, args: Any, kwargs: dict, output: Any) -> None:
        try:
            loss = _loss_of(output) if module.training else None
            if loss is not None:
                # with gradient accumulation, transformers normalizes each micro-batch's loss by the tokens of
                # the whole accumulated batch: the step's loss is then their sum, not their mean
                self._summed = kwargs.get("num_items_in_batch") is not None
                # a copy: the Trainer scales the returned loss in place (``loss *= world_size``) after the forward
                self._current.append(loss.detach().clone().float().reshape(()))
        except Exception as exc:   # never break forward
            self.errors.append(exc)

    @property
    def summed(self) -> bool:
        """The Trainer passed ``num_items_in_batch``: micro-batch losses are partial sums of the step's loss."""
        return self._summed

    def end_step(self, step: int) -> None:
        if self._current:
            device = self._current[0].device
            stacked = torch.stack([v.to(device) for v in self._current])
            self._pending.append((step, stacked.sum() if self._summed else stacked.mean()))
            self._current = []

    def drain(self) -> Drained:
        out, self._pending = _to_host(self._pending), []
        return out

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self._tap is not None:
            self._tap.remove()
            self._tap = None


def batch_shape(args: tuple, kwargs: dict) -> tuple[int, int] | None:
    """(batch, sequence length) of a causal-LM forward call, from input_ids or inputs_embeds."""
    for key in ("input_ids", "inputs_embeds"):
        t = kwargs.get(key)
        if isinstance(t, torch.Tensor) and t.dim() >= 2:
            return int(t.shape[0]), int(t.shape[1])
    if args and isinstance(args[0], torch.Tensor) and args[0].dim() >= 2:
        return int(args[0].shape[0]), int(args[0].shape[1])
    return None


_IMAGE_TOKEN_KEYS = ("image_token_id", "image_token_index")


def batch_inputs(module: Any, kwargs: dict) -> dict:
    """Image / audio settings for ``lora_doctor.plan`` read from a multimodal batch, and the text length.

    ``pixel_values`` (LLaVA, Gemma-3: one (3, H, W) image per row; Qwen2-VL: flattened patches with
    ``image_grid_thw`` rows per image) give the images per sample and their size; the image tokens the
    processor put into ``input_ids`` give the tokens per image, so the plan's ``seq_len`` is the text
    alone. ``input_features`` (Whisper) give 30-second windows; the decoder ids give the length.
    """
    out: dict[str, Any] = {}
    ids, pixels = kwargs.get("input_ids"), kwargs.get("pixel_values")
    if isinstance(kwargs.get("input_features"), torch.Tensor):
        labels = kwargs.get("decoder_input_ids", kwargs.get("labels"))
        out["audio_seconds"] = 30.0
        if isinstance(labels, torch.Tensor) and labels.dim() >= 2:
            out["seq_len"], out["batch_size"] = int(labels.shape[1]), int(labels.shape[0])
        return out
    if not isinstance(pixels, torch.Tensor) or not isinstance(ids, torch.Tensor) or ids.dim() < 2:
        return out
    config = getattr(getattr(module, "get_base_model", lambda: module)(), "config", None)
    token = next((getattr(config, k) for k in _IMAGE_TOKEN_KEYS if getattr(config, k, None) is not None), None)
    grid = kwargs.get("image_grid_thw")
    if isinstance(grid, torch.Tensor) and grid.dim() == 2:
        images = int(grid.shape[0])
        patch = int(getattr(getattr(config, "vision_config", None), "patch_size", 14) or 14)
        largest = grid[int((grid[:, 1] * grid[:, 2]).argmax())]
        out["image_size"] = (int(largest[1]) * patch, int(largest[2]) * patch)
    elif pixels.dim() == 4:
        images = int(pixels.shape[0])
        out["image_size"] = (int(pixels.shape[-2]), int(pixels.shape[-1]))
    else:
        return out
    b = int(ids.shape[0])
    out["images_per_sample"] = max(images // max(b, 1), 1)
    if token is not None:
        per_sample = int((ids == token).sum()) // max(b, 1)
        out["image_tokens"] = max(per_sample // out["images_per_sample"], 1)
        out["seq_len"] = max(int(ids.shape[1]) - per_sample, 1)
    return out


class FirstBatchHook:
    """Calls ``fn(batch, seq_len, inputs)`` once, just before the first training forward pass.

    ``inputs`` are the multimodal plan settings of :func:`batch_inputs` (empty for text)."""

    def __init__(self, fn: Callable[..., None]) -> None:
        self._fn = fn
        self._handle: Any = None

    def attach(self, model: torch.nn.Module) -> None:
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if not module.training:
            return None
        self.detach()
        shape = batch_shape(args, kwargs)
        inputs = batch_inputs(module, kwargs)
        batch, seq = shape or (inputs.pop("batch_size", None), None)
        inputs.pop("batch_size", None)
        seq = inputs.pop("seq_len", seq)
        self._fn(batch, seq, inputs)
        return None

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
