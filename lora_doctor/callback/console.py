"""Rendering: the pre-flight panel, the status line and alarms, as rich (terminal, Jupyter) or plain text.

Content is built as plain rows first (:func:`preflight_rows`, :func:`status_text`), then drawn with
rich or as plain lines, so both look alike and the snapshot tests pin one layout. Output goes through
``tqdm.write``, which lifts the Trainer's progress bar, prints, and redraws it, so lines never mix.
"""

from __future__ import annotations

import io
import math
import shutil
import sys
from dataclasses import dataclass
from typing import IO, Any, Iterable

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..findings import Finding
from ..plan_types import DEVICE_TERMS
from ..units import format_bytes
from .memory import MemoryReading
from .preflight import PreflightReport

SEVERITY_STYLES = {"error": "bold red", "warning": "yellow", "info": "cyan"}
SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
MAX_WIDTH = 110


def _count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def _memory_row(report: PreflightReport) -> str:
    plan, capacity = report.plan, report.capacity_bytes
    if plan is None:
        where = f" on a {format_bytes(capacity)} GPU" if capacity else " (no GPU: nothing to measure)"
        return f"no plan{where}; measured peaks are logged after the first step"
    shown = plan.breakdown if capacity else {k: v for k, v in plan.breakdown.items() if k not in DEVICE_TERMS}
    terms = sorted(((v, k) for k, v in shown.items() if v), reverse=True)[:4]
    largest = "; largest: " + ", ".join(f"{k} {format_bytes(v, 1)}" for v, k in terms)
    if not capacity:
        return f"planned tensor peak {format_bytes(plan.peak_bytes)} (no GPU to compare with){largest}"
    headroom = capacity - plan.device_peak_bytes
    return (f"planned peak {format_bytes(plan.peak_bytes)} (device {format_bytes(plan.device_peak_bytes)}) "
            f"of {format_bytes(capacity)}: {plan.device_peak_bytes / capacity:.0%} used, "
            f"{'headroom' if headroom >= 0 else 'SHORT by'} {format_bytes(abs(headroom))}{largest}")


def preflight_rows(report: PreflightReport) -> list[tuple[str, str]]:
    """(label, text) rows of the pre-flight panel."""
    s = report.summary
    trainer = report.settings.get("trainer", "hf")
    rows = [("mode", f"{s.mode}{'' if trainer == 'hf' else ', ' + trainer.upper() + ' (TRL)'}, "
                     f"seq_len {report.settings.get('seq_len', '?')}, "
                     f"micro-batch {report.settings.get('batch_size', '?')}"),
            ("trainable", f"{_count(s.trainable_params)} of {_count(s.total_params)} params "
                          f"({s.trainable_fraction:.2%})")]
    if s.adapted_linears:
        scales = ", ".join(f"{v:g}" for v in s.lora_scales)
        rows.append(("LoRA scale", f"{scales} (r={', '.join(map(str, s.ranks))})"))
        uncovered = f"; not adapted: {', '.join(s.uncovered_families)}" if s.uncovered_families else ""
        rows.append(("targets", f"{', '.join(s.adapted_families)} ({s.adapted_linears} of {s.total_linears} "
                                f"linears){uncovered}"))
    images = _images_row(report)
    if images:
        rows.insert(1, ("images", images))
    rows.append(("memory", _memory_row(report)))
    return rows


def _images_row(report: PreflightReport) -> str | None:
    """Which images the plan took and why (plan_trainer's record), else the first batch's."""
    details = getattr(report.plan, "details", None) or {}
    planned = (details.get("batch") or {}).get("images")
    if planned is None and report.settings.get("images_per_sample"):
        planned = {**report.settings, "source": "the first batch's images"}
    if not planned:
        return None
    size = planned.get("image_size") or (details.get("inputs") or {}).get("planned_image_size")
    tokens = (details.get("inputs") or {}).get("lm_tokens_per_image") or planned.get("image_tokens")
    return (f"{planned['images_per_sample']} per row" + (f" at {size[1]}x{size[0]}" if size else "")
            + (f", {tokens} tokens each" if tokens else "") + f": {planned['source']}")


def _sorted(findings: Iterable[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: SEVERITY_ORDER.get(f.severity, 9))


def finding_lines(f: Finding) -> list[str]:
    return [f"[{f.severity}] {f.code}: {f.message}", f"    fix: {f.fix}"]


def preflight_plain(report: PreflightReport) -> str:
    lines = ["lora-doctor pre-flight"]
    lines += [f"  {label:<11}{text}" for label, text in preflight_rows(report)]
    for f in _sorted(report.findings):
        lines += [f"  {line}" for line in finding_lines(f)]
    if not report.findings:
        lines.append("  no findings")
    return "\n".join(lines)


def _finding_text(f: Finding) -> Text:
    text = Text()
    text.append(f"{f.severity} ", style=SEVERITY_STYLES.get(f.severity, ""))
    text.append(f"{f.code}: ", style="bold")
    text.append(f.message)
    text.append(f"\nfix: {f.fix}", style="dim")
    return text


def preflight_panel(report: PreflightReport) -> Panel:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    for label, text in preflight_rows(report):
        grid.add_row(label, text)
    body: list[Any] = [grid]
    body += [_finding_text(f) for f in _sorted(report.findings)] or [Text("no findings", style="green")]
    return Panel(Group(*body), title="lora-doctor pre-flight", title_align="left", expand=False)


def alarm_panel(findings: list[Finding], note: str = "") -> Panel:
    worst = _sorted(findings)[0].severity if findings else "info"
    body = [_finding_text(f) for f in _sorted(findings)] + ([Text(note, style="bold")] if note else [])
    return Panel(Group(*body), title="lora-doctor alarm", title_align="left",
                 border_style=SEVERITY_STYLES.get(worst, ""), expand=False)


def alarm_plain(findings: list[Finding], note: str = "") -> str:
    lines = ["lora-doctor alarm"] + [f"  {line}" for f in _sorted(findings) for line in finding_lines(f)]
    return "\n".join(lines + ([f"  {note}"] if note else []))


@dataclass
class Status:
    """One status line's numbers (None = unknown)."""

    step: int
    loss: float | None = None
    grad_norm: float | None = None
    grad_median: float | None = None
    top_module: str | None = None
    top_module_norm: float | None = None
    dead_adapters: int | None = None
    delta_ratio_max: float | None = None
    memory: MemoryReading | None = None
    planned_peak: int | None = None
    alarms: int = 0


def _num(v: float | None) -> str:
    return "?" if v is None else (f"{v}" if not math.isfinite(v) else f"{v:.4g}")


def status_text(s: Status) -> str:
    parts = [f"doctor step {s.step}"]
    if s.loss is not None:
        parts.append(f"loss {_num(s.loss)}")
    if s.grad_norm is not None:
        parts.append(f"grad {_num(s.grad_norm)} (median {_num(s.grad_median)})")
    if s.top_module:
        parts.append(f"top {s.top_module} {_num(s.top_module_norm)}")
    if s.delta_ratio_max is not None:
        parts.append(f"update/weight max {s.delta_ratio_max:.3g}")
    if s.dead_adapters:
        parts.append(f"dead adapters {s.dead_adapters}")
    if s.memory is not None and s.memory.measured:
        plan = f", plan {format_bytes(s.planned_peak, 1)}" if s.planned_peak else ""
        cap = f" of {format_bytes(s.memory.capacity, 1)}" if s.memory.capacity else ""
        parts.append(f"mem peak {format_bytes(s.memory.allocated_peak, 1)}{cap}{plan}")
    parts.append(f"{s.alarms} alarm{'s' if s.alarms != 1 else ''}" if s.alarms else "ok")
    return " | ".join(parts)


def _in_jupyter() -> bool:
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return type(shell).__name__ == "ZMQInteractiveShell"


class DoctorConsole:
    """Prints on the main process only; rich in a terminal or Jupyter, plain text otherwise."""

    def __init__(self, enabled: bool = True, *, file: IO[str] | None = None, rich: bool | None = None,
                 width: int | None = None) -> None:
        self.enabled = enabled
        self._file = file
        self._rich = rich
        self._width = width
        self._broken = False

    @property
    def file(self) -> IO[str]:
        return self._file or sys.stdout

    def use_rich(self) -> bool:
        if self._rich is not None:
            return self._rich
        isatty = getattr(self.file, "isatty", lambda: False)
        return bool(isatty()) or _in_jupyter()

    def render(self, renderable: Any) -> str:
        width = self._width or min(shutil.get_terminal_size((100, 20)).columns, MAX_WIDTH)
        buffer = io.StringIO()
        Console(file=buffer, width=width, force_terminal=True, force_jupyter=False,
                color_system="standard").print(renderable)
        return buffer.getvalue().rstrip("\n")

    def emit(self, renderable: Any, plain: str) -> None:
        """Print; never raises. A console that fails (OSError on a full disk, a closed stream) gives one
        warning and goes quiet, so output can never break training."""
        if not self.enabled or self._broken:
            return
        try:
            text = self.render(renderable) if self.use_rich() else plain
            try:
                from tqdm.auto import tqdm

                tqdm.write(text, file=self.file)
            except Exception:
                print(text, file=self.file, flush=True)
        except Exception as exc:  # noqa: BLE001 - output must never break training
            self._broken = True
            import warnings

            from .callback import LoraDoctorWarning  # imported here: callback.py imports this module

            warnings.warn(f"lora-doctor: console output failed ({type(exc).__name__}: {exc}); further panels and "
                          "status lines are not printed, training continues", LoraDoctorWarning, stacklevel=2)

    def preflight(self, report: PreflightReport) -> None:
        self.emit(preflight_panel(report), preflight_plain(report))

    def alarm(self, findings: list[Finding], note: str = "") -> None:
        self.emit(alarm_panel(findings, note), alarm_plain(findings, note))

    def status(self, status: Status) -> None:
        line = status_text(status)
        style = "yellow" if status.alarms else "green"
        self.emit(Text(line, style=style), line)
