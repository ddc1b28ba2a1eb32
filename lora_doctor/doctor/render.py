"""Render a DoctorReport with rich, or as plain text (for pipes and logs)."""

from __future__ import annotations

from typing import Any

from .report import DoctorReport

STYLES = {"error": "bold red", "warning": "yellow", "info": "cyan"}
MARKS = {"error": "ERROR", "warning": "WARN ", "info": "info "}


def _summary_lines(report: DoctorReport) -> list[str]:
    s = report.summary
    lines = [f"model: {report.model} ({s.get('model_type', '?')})"]
    if "targets" in s:
        per = ", ".join(f"{p}: {n}" for p, n in s.get("matched_per_pattern", {}).items())
        lines.append(f"target_modules: {s['targets']}  ->  {s.get('matched_modules', 0)} modules ({per})")
    if s.get("coverage"):
        covered = [k for k, v in s["coverage"].items() if v]
        missing = [k for k, v in s["coverage"].items() if not v]
        lines.append(f"adapted families: {covered or '-'}; not adapted: {missing or '-'}")
    if "scale" in s:
        sc = s["scale"]
        extra = f" (per module {sc['min']:.2f}..{sc['max']:.2f})" if sc["min"] != sc["max"] else ""
        lines.append(f"effective scale {sc['formula']} = {sc['scale']:.2f}{extra}")
    if s.get("adapter_params"):
        lines.append(f"adapter parameters: {s['adapter_params']:,}")
    return lines


def report_text(report: DoctorReport) -> str:
    lines = _summary_lines(report)
    if not report.findings:
        lines.append("no findings: the config looks healthy")
    for f in report.findings:
        lines.append(f"{MARKS[f.severity]} [{f.code}] {f.message}")
        lines.append(f"       fix: {f.fix}")
    counts = {sev: len(report.by_severity(sev)) for sev in MARKS}
    lines.append(f"{counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} info")
    return "\n".join(lines)


def render_report(report: DoctorReport) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = Text("\n".join(_summary_lines(report)))
    if not report.findings:
        return Group(head, Text("no findings: the config looks healthy", style="green"))
    table = Table(show_lines=True, expand=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("code", no_wrap=True)
    table.add_column("finding", ratio=3)
    table.add_column("fix", ratio=2)
    for f in report.findings:
        table.add_row(Text(f.severity, style=STYLES[f.severity]), f.code, f.message, f.fix)
    return Group(head, table)
