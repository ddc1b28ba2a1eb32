"""Byte sizes: parsing user input and formatting for humans. Pure, no dependencies."""

from __future__ import annotations

import re

from .errors import InvalidSettingError

GIB = 1024**3
MIB = 1024**2

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1024**2, "mb": 1024**2, "mib": 1024**2, "mbd": 1000**2,
    # Vendors sell "24 GB" cards that hold 24 GiB; users type either. "G"/"GB" (and "M"/"MB") follow
    # the card label convention (binary), "GiB" is exact; decimal units are available as "GBd"/"MBd".
    "g": GIB, "gb": GIB, "gib": GIB, "gbd": 1000**3,
    "t": 1024**4, "tb": 1024**4, "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int | float) -> int:
    """Parse ``"24GB"``, ``"24GiB"``, ``"80G"``, ``"512MiB"`` or a byte count into bytes.

    ``GB`` and ``G`` mean GiB, as on GPU spec sheets (an "80 GB" A100 has 80 GiB).
    Raises :class:`InvalidSettingError` for anything else.
    """
    if isinstance(text, bool):
        raise InvalidSettingError(f"not a size: {text!r}")
    if isinstance(text, (int, float)):
        value, unit = float(text), ""
    else:
        match = _SIZE_RE.match(text)
        if not match:
            raise InvalidSettingError(f"not a size: {text!r} (expected e.g. 24GB, 24GiB, 80G or a byte count)")
        value, unit = float(match.group(1)), match.group(2).lower()
        if unit not in _UNITS:
            raise InvalidSettingError(f"unknown size unit {match.group(2)!r} in {text!r}")
    size = int(value * _UNITS[unit])
    if size <= 0:
        raise InvalidSettingError(f"size must be positive, got {text!r}")
    return size


def format_bytes(n: int | float, precision: int = 2) -> str:
    """Format a byte count in binary units: ``format_bytes(3 * GIB) == '3.00 GiB'``."""
    n = float(n)
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if n >= scale:
            return f"{sign}{n / scale:.{precision}f} {unit}"
    return f"{sign}{int(n)} B"
