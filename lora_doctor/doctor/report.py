"""The doctor's result: findings plus a summary of what was checked. Pure data; rendering lives in render.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..findings import SEVERITIES, Finding, worst


@dataclass
class DoctorReport:
    """Findings (most severe first) and the numbers behind them (matched modules, coverage, scale, ...)."""

    model: str
    findings: list[Finding] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.findings = sorted(self.findings, key=lambda f: SEVERITIES.index(f.severity))

    def by_severity(self, severity: str) -> list[Finding]:
        return [f for f in self.findings if f.severity == severity]

    @property
    def errors(self) -> list[Finding]:
        return self.by_severity("error")

    @property
    def warnings(self) -> list[Finding]:
        return self.by_severity("warning")

    @property
    def codes(self) -> list[str]:
        return [f.code for f in self.findings]

    @property
    def ok(self) -> bool:
        """True when nothing is an error (warnings and info allowed)."""
        return not self.errors

    @property
    def worst(self) -> str | None:
        return worst(self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "ok": self.ok, "worst": self.worst,
                "findings": [f.to_dict() for f in self.findings], "summary": self.summary}

    def to_json(self, indent: int | None = 2) -> str:
        from ..strict_json import dumps

        return dumps(self.to_dict(), indent=indent)

    def __rich__(self) -> Any:
        from .render import render_report

        return render_report(self)

    def __str__(self) -> str:
        from .render import report_text

        return report_text(self)
