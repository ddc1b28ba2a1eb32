"""Byte sizes: parsing user input and formatting for humans. Pure, no dependencies."""

from __future__ import annotations

import math
import re
from decimal import Decimal

from .errors import InvalidSettingError

GIB = 1024**3
MIB = 1024**2
MAX_BYTES = 2**60   # 1 EiB: anything larger is a typo, not a memory size

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1024**2, "mb": 1024**2, "mib": 1024**2, "mbd": 1000**2,
    # Vendors sell "24 GB" cards that hold 24 GiB; users type either. "G"/"GB" (and "M"/"MB") follow
    # the card label convention (binary), "GiB" is exact; decimal units are available as "GBd"/"MBd".
    "g": GIB, "gb": GIB, "gib": GIB, "gbd": 1000**3,
    "t": 1024**4, "tb": 1024**4, "tib": 1024**4,
}
# A plain decimal number (no sign, no exponent, at most 30 characters) and an optional unit.
_SIZE_RE = re.compile(r"^\s*(\d{1,30}(?:\.\d{0,30})?|\.\d{1,30})\s*([a-zA-Z]{0,4})\s*$")


def parse_size(text: str | int | float) -> int:
    """Parse ``"24GB"``, ``"24GiB"``, ``"80G"``, ``"512MiB"`` or a byte count into bytes.

    ``GB`` and ``G`` mean GiB, as on GPU spec sheets (an "80 GB" A100 has 80 GiB).
    Raises :class:`InvalidSettingError` for anything else, including NaN, infinity and sizes over 1 EiB.
    """
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise InvalidSettingError(f"not a size: {text!r}")
    if isinstance(text, float) and not math.isfinite(text):
        raise InvalidSettingError(f"not a size: {text!r} (must be a finite number)")
    if isinstance(text, (int, float)):
        value, unit = Decimal(text), ""
    else:
        match = _SIZE_RE.match(text)
        if not match:
            raise InvalidSettingError(f"not a size: {text[:60]!r} (expected e.g. 24GB, 24GiB, 80G or a byte count)")
        value, unit = Decimal(match.group(1)), match.group(2).lower()
        if unit not in _UNITS:
            raise InvalidSettingError(f"unknown size unit {match.group(2)!r} in {text!r}")
    size = int(value * _UNITS[unit])
    if size <= 0:
        raise InvalidSettingError(f"size must be positive, got {text!r}")
    if size > MAX_BYTES:
        raise InvalidSettingError(f"size {str(text)[:40]!r} is over 1 EiB; not a memory size")
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
