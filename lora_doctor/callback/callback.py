"""``LoraDoctorCallback``: pre-flight checks and live training diagnostics inside a ``transformers.Trainer``.

    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[LoraDoctorCallback()])

See docs/callback.md for options, metrics and alarms. Every event handler and hook is guarded: an
exception inside the callback is reported once as a :class:`LoraDoctorWarning` (and a
``callback-internal-error`` finding) and training goes on.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Any, Callable

from transformers import TrainerCallback

from ..errors import InvalidSettingError, WontFitError
from ..findings import Finding
from ..gpus import parse_gpu
from .console import DoctorConsole, Status
from .fallback import apply_fallback
from .glue import checkpoint_dir, find_callback_handler, is_logging_step, move_before_reporters
from .memory import MemoryMeter, MemoryReading, judge_memory, memory_metrics
from .monitor import Monitor, Thresholds
from .preflight import PreflightReport, run_preflight
from .trl_health import trl_log_findings
from .probes import FirstBatchHook
from .stopping import ACTION_OPTION, DEEPSPEED_LIMITS, model_only_finding, stop_finding
from .vote import ABSENT, Outcome, RankReport, conclude, exchange, rank_report, settle, world

ACTIONS = ("warn", "stop")
REPORT_ONCE = {"memory-plan-off", "memory-headroom-low", "update-ratio-high", "adapters-dead", "grpo-rewards-tie"}


class LoraDoctorWarning(UserWarning):
    """The callback itself failed somewhere; training was not affected."""


def _guarded(method: Callable) -> Callable:
    @functools.wraps(method)
    def wrapper(self: "LoraDoctorCallback", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            self._internal_error(method.__name__, exc)
            return None
    return wrapper


class LoraDoctorCallback(TrainerCallback):
    """Checks a run before its first step and watches it while it trains.

    Args:
        on_explosion: ``"warn"`` or ``"stop"`` on a gradient-norm or loss spike.
        on_nonfinite: ``"stop"`` (default) or ``"warn"`` on a NaN/inf loss or gradient norm.
        thresholds: every detection threshold (:class:`Thresholds`).
        check_every: judge buffered per-step values every N optimizer steps. By default values are
            judged at the Trainer's logging steps on a GPU (reading them is a GPU sync) and at every
            step on CPU (free).
        save_on_stop: save a checkpoint through the Trainer before stopping.
        gpu: GPU to plan against (name or size); default: the local one.
        console: print the panel, status lines and alarms (main process only); or a DoctorConsole.
        preflight: run the config doctor and the planner before the first step.
        auto_fallback: when the pre-flight plan predicts an OOM on ``gpu``, enable gradient checkpointing
            and convert the frozen base linears to 4-bit in place before the first step, or stop with
            :class:`WontFitError` if even that does not fit (docs/fallback.md). Off by default: the
            callback never changes a model unless asked.
    """

    def __init__(self, on_explosion: str = "warn", on_nonfinite: str = "stop", *,
                 thresholds: Thresholds | None = None, check_every: int | None = None,
                 save_on_stop: bool = True, gpu: Any = None, console: bool | DoctorConsole = True,
                 preflight: bool = True, auto_fallback: bool = False) -> None:
        for name, value in (("on_explosion", on_explosion), ("on_nonfinite", on_nonfinite)):
            if value not in ACTIONS:
                raise InvalidSettingError(f"{name} must be one of {ACTIONS}, got {value!r}")
        if check_every is not None and check_every < 1:
            raise InvalidSettingError(f"check_every must be >= 1, got {check_every}")
        self.actions = {"on_explosion": on_explosion, "on_nonfinite": on_nonfinite}
        self.thresholds = thresholds or Thresholds()
        self.check_every = check_every
        self.save_on_stop = save_on_stop
        self.gpu = None if gpu == "auto" else parse_gpu(gpu)   # bad specs fail here, not mid-training
        self.console = console if isinstance(console, DoctorConsole) else DoctorConsole(bool(console))
        self.run_preflight = preflight
        self.auto_fallback = auto_fallback
        self.findings: list[Finding] = []
        self.report: PreflightReport | None = None
        self.stopped_at: int | None = None
        self.checkpoint: str | None = None
        self.memory: MemoryReading = MemoryReading()
        self.monitor: Monitor | None = None
        self._stop: Finding | None = None
        self._skipped_update = False
        self._reported: set[str] = set()
        self._unprinted: list[Finding] = []
        self._candidate: Finding | None = None   # this rank's finding in the current vote
        self._failed: set[str] = set()
        self._main = True
        self._scaler: Any = None
        self._device: Any = None
        self._meter: MemoryMeter | None = None
        self._first_batch_hook: FirstBatchHook | None = None

    # ---- failures of our own --------------------------------------------------------------
    def _internal_error(self, where: str, exc: BaseException) -> None:
        if where in self._failed:
            return
        self._failed.add(where)
        self.findings.append(Finding(
            "callback-internal-error", "warning",
            f"lora-doctor's {where} failed ({type(exc).__name__}: {exc}); that check is skipped, training goes on",
            "please report this at the lora-doctor issue tracker with the traceback", {"where": where, "error": repr(exc)},
        ))
        warnings.warn(f"lora-doctor: {where} failed ({type(exc).__name__}: {exc}); training continues",
                      LoraDoctorWarning, stacklevel=3)

    # ---- setup ----------------------------------------------------------------------------
    @_guarded
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       processing_class: Any = None, **kwargs: Any) -> None:
        self._main = bool(getattr(state, "is_world_process_zero", True))
        handler = find_callback_handler()
        if handler is not None:
            move_before_reporters(handler, self)
        if model is None:
            return
        self.on_train_end(args, state, control)   # a second train() on the same callback: drop old hooks
        first = next(model.parameters(), None)
        self._device = first.device if first is not None else None
        self._meter = MemoryMeter(self._device)
        self._scaler = getattr(optimizer, "scaler", None) if getattr(args, "fp16", False) else None
        size = world()[1]
        averaged = size > 1 and bool(getattr(args, "average_tokens_across_devices", False))
        self.monitor = Monitor(model, self.thresholds, fp16_scaling=self._scaler is not None, world_size=size,
                               loss_factor=float(size) if averaged else 1.0)
        deepspeed = bool(getattr(args, "deepspeed", None))
        self.monitor.attach(model, gradients=not deepspeed)
        if deepspeed:
            self._record([DEEPSPEED_LIMITS])
        self._first_batch_hook = FirstBatchHook(
            lambda batch, seq, inputs=None: self._before_first_step(model, args, processing_class, batch, seq, inputs))
        self._first_batch_hook.attach(model)

    def _before_first_step(self, model: Any, args: Any, tokenizer: Any, batch: int | None, seq: int | None,
                           inputs: dict | None = None) -> None:
        self._preflight(model, args, tokenizer, batch, seq, inputs)
        if self.auto_fallback and self.report is not None:   # WontFitError stops the run here, on purpose
            try:
                found = apply_fallback(model, self.report)
            except WontFitError as exc:
                self._record([Finding("auto-fallback-wont-fit", "error", str(exc),
                                      "use a larger GPU, shorter sequences or a smaller micro-batch", {})])
                self._checked("console", self._flush)
                raise
            except Exception as exc:  # any other failure (no checkpointing support, bitsandbytes missing): go on
                self._internal_error("auto_fallback", exc)
                return
            if found is not None:
                # the pre-flight's "won't fit" is answered now; the monitor must read the new (4-bit) weights,
                # or it would keep the old full-precision ones alive
                self.findings = [f for f in self.findings if f.code != "memory-wont-fit"]
                if self.monitor is not None:
                    self.monitor.refresh_adapters(model)
                self._record([found])
                self._checked("console", self._flush)

    @_guarded
    def _preflight(self, model: Any, args: Any, tokenizer: Any, batch: int | None, seq: int | None,
                   inputs: dict | None = None) -> None:
        self.report = run_preflight(model, args, tokenizer, self.monitor.adapters if self.monitor else [],
                                    batch=batch, seq_len=seq, gpu=self.gpu, use_library=self.run_preflight,
                                    inputs=inputs)
        self.findings += self.report.findings
        if self._main:
            self._checked("console", self.console.preflight, self.report)

    # ---- per step -------------------------------------------------------------------------
    def _due(self, args: Any, state: Any, step: int) -> bool:
        """Is ``step`` a check point? Decided only from the arguments, the state and the step, so that every
        rank answers the same and all of them join the vote."""
        on_cpu = getattr(getattr(args, "device", None), "type", "cpu") == "cpu"
        return (on_cpu or step == 1 or is_logging_step(args, state, step)
                or bool(self.check_every and step % self.check_every == 0))

    @_guarded
    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        step = state.global_step + 1
        due = self._due(args, state, step)
        mine = self._checked("per-step checks", self._step_verdict, step, due)
        if due:   # every rank, whatever failed above: the vote is a collective
            self._vote(args, step, mine, model, before_update=True)
        self._checked("console", self._flush)

    def _step_verdict(self, step: int, due: bool) -> RankReport | None:
        if self.monitor is None:
            return None
        self.monitor.end_step(step, getattr(self._scaler, "_scale", None))
        if not due:
            return None
        new = self._record(self.monitor.judge())
        for exc in self.monitor.probe_errors[:1]:
            self._internal_error("gradient/loss probe", exc)
        latest = self.monitor.latest
        fresh_grad = latest.step == step and latest.grad_norm is not None
        return self._report(new, grad_sq=latest.grad_norm ** 2 if fresh_grad else None,
                            grad_kind=self.monitor.grad.kind, loss=latest.loss if latest.loss_step == step else None)

    def _stops(self, f: Finding) -> bool:
        return self.actions.get(ACTION_OPTION.get(f.code, ""), "warn") == "stop"

    def _report(self, new: list[Finding], **latest: Any) -> RankReport:
        report, self._candidate = rank_report(world()[0], new, self._stops, **latest)
        return report

    def _vote(self, args: Any, step: int, mine: RankReport | None, model: Any, *, before_update: bool) -> None:
        """Join the collective (always), then act on what every rank concludes alike. ``before_update``: the
        optimizer has not stepped yet, so a non-finite update can still be dropped."""
        try:
            row = mine.encode() if mine is not None else ABSENT
        except Exception:
            row = ABSENT
        outcome = settle(exchange(row, args))
        self._checked("agreed vote", self._apply, outcome, step, model, before_update)

    def _apply(self, outcome: Outcome, step: int, model: Any, before_update: bool) -> None:
        rank, size = world()
        verdict = conclude(outcome, step, rank, size, self._candidate,
                           {(f.code, f.data.get("step")) for f in self.findings}, self._stop is not None)
        drop = verdict.drop_update and before_update and self._scaler is None
        if drop:
            self._drop_gradients(model)   # on every rank: the optimizer skips this update everywhere
        if verdict.stop is not None:
            self._stop, self._skipped_update = verdict.stop, drop
        self._record(verdict.findings)
        self._candidate = None
        if self.monitor is not None:
            latest = self.monitor.latest
            latest.grad_norm = outcome.grad_norm if outcome.grad_norm is not None else latest.grad_norm
            latest.loss = outcome.loss if outcome.loss is not None else latest.loss

    def _drop_gradients(self, model: Any) -> None:
        """Skip this optimizer update: torch optimizers leave parameters whose grad is None untouched."""
        params = list(model.parameters()) if model is not None else (self.monitor.params if self.monitor else [])
        for p in params:
            p.grad = None

    def _record(self, found: list[Finding]) -> list[Finding]:
        """Keep new findings (once for REPORT_ONCE codes) and queue them for the console."""
        new = [f for f in found if f.code not in REPORT_ONCE or f.code not in self._reported]
        self._reported.update(f.code for f in new)
        self.findings += new
        self._unprinted += new
        return new

    def _flush(self) -> None:
        """Print queued alarms: main process only, after any collective, never before it."""
        new, self._unprinted = self._unprinted, []
        if new and self._main:
            self.console.alarm(new)

    @_guarded
    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        step = state.global_step
        if self._stop is not None and self.stopped_at is None:
            self._request_stop(args, state, control)   # first: every rank stops at the same step
        if self.monitor is not None and self._due(args, state, step):
            self._record(self._checked("adapter checks", self.monitor.adapter_checks, step) or [])
            self._record(self._checked("memory readings", self._memory_check, step) or [])
        self._checked("console", self._flush)
        return control

    def _checked(self, where: str, fn: Callable, *args: Any) -> Any:
        """Run one metric source; a failure disables nothing else."""
        try:
            return fn(*args)
        except Exception as exc:
            self._internal_error(where, exc)
            return None

    def _memory_check(self, step: int) -> list[Finding]:
        if self._meter is None:
            return []
        self.memory = self._meter.read()
        report = self.report
        return judge_memory(self.memory, report.planned_peak if report else None,
                            report.planned_device_peak if report else None, step=step,
                            tolerance=self.thresholds.plan_tolerance, min_headroom=self.thresholds.min_headroom)

    def _request_stop(self, args: Any, state: Any, control: Any) -> None:
        self.stopped_at = state.global_step
        control.should_training_stop = True
        if self.save_on_stop:
            control.should_save = True
            self.checkpoint = checkpoint_dir(args, state)
        self._record([stop_finding(self._stop, state.global_step, self.checkpoint, self._skipped_update)])

    # ---- logs, saves, end -----------------------------------------------------------------
    @_guarded
    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, model: Any = None,
               **kwargs: Any) -> Any:
        if logs is None or not ({"loss", "grad_norm"} & set(logs)):
            return None
        step = state.global_step
        # DPO / GRPO metrics (lora_doctor.callback.trl_health): the logs are the same on every rank
        self._checked("TRL metrics", lambda: self._record(trl_log_findings(logs, step)))
        if "grad_norm" in logs:   # the Trainer's training logs, on every rank alike: a vote is safe here
            mine = self._checked("logged gradient norm", self._log_verdict, step, logs.get("grad_norm"))
            self._vote(args, step, mine, None, before_update=False)
            if self._stop is not None and self.stopped_at is None:
                self._request_stop(args, state, control)
        if self.monitor is not None:
            self._checked("metrics", self._log_metrics, logs, state, step)
        self._checked("console", self._flush)
        return control

    def _log_verdict(self, step: int, grad_norm: Any) -> RankReport | None:
        """Without working gradient hooks (DeepSpeed), judge the Trainer's logged (global) gradient norm."""
        if self.monitor is None:
            return None
        if self.monitor.probe_working or not isinstance(grad_norm, (int, float)):
            return RankReport(world()[0], True)
        found = self.monitor.observe_grad_norm(step, float(grad_norm))
        return self._report(self._record([found] if found else []))

    def _log_metrics(self, logs: dict, state: Any, step: int) -> None:
        metrics = {**self.monitor.metrics(),
                   **memory_metrics(self.memory, self.report.planned_peak if self.report else None),
                   "doctor/alarms": float(sum(f.severity != "info" for f in self.findings))}
        logs.update(metrics)
        if state.log_history and state.log_history[-1].get("step") == step:
            state.log_history[-1].update(metrics)
        if self._main:
            self._checked("console", self.console.status, self._status(step))

    def _status(self, step: int) -> Status:
        latest = self.monitor.latest
        return Status(step, latest.loss, latest.grad_norm, self.monitor.grad_detector.stats().median,
                      latest.top_module, latest.top_module_norm, latest.dead_adapters, latest.update_ratio_max,
                      self.memory, self.report.planned_peak if self.report else None,
                      sum(f.severity != "info" for f in self.findings))

    @_guarded
    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.checkpoint and not os.path.isdir(self.checkpoint):
            self._internal_error("checkpoint before stopping", FileNotFoundError(self.checkpoint))

    def _ensure_stop_checkpoint(self, model: Any) -> None:
        """The Trainer may not honour ``should_save`` (``save_strategy="best"`` overrides it): save ourselves."""
        if not self.checkpoint or os.path.isdir(self.checkpoint) or model is None:
            return
        model.save_pretrained(self.checkpoint, is_main_process=self._main)   # one writer under DDP
        self._record([model_only_finding(self.checkpoint)])
        self._checked("console", self._flush)

    @_guarded
    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._ensure_stop_checkpoint(kwargs.get("model"))
        if self._first_batch_hook is not None:
            self._first_batch_hook.detach()
        if self.monitor is not None:
            self.monitor.detach()
