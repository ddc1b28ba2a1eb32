"""Findings: what the doctor and the callback report, as data (code, severity, message, fix)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Finding:
    """One diagnosis: a stable ``code`` (documented in docs/checks.md), its severity, the cause, the fix."""

    code: str
    severity: str      # "error" | "warning" | "info"
    message: str       # what is wrong and why it matters
    fix: str           # what to change
    data: dict = field(default_factory=dict)   # numbers behind the message, for --json

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def worst(findings: Iterable[Finding]) -> str | None:
    """The most severe level among findings, or None when there are none."""
    levels = {f.severity for f in findings}
    return next((s for s in SEVERITIES if s in levels), None)
