"""Strict JSON for everything lora-doctor prints: never ``NaN`` / ``Infinity`` (invalid JSON that most
parsers reject). Non-finite floats become ``null``; tuples and sets become lists; unknown objects their
``str``."""

from __future__ import annotations

import json
import math
from typing import Any


def sanitize(value: Any) -> Any:
    """A copy of ``value`` made of JSON types only, with non-finite floats replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitize(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((sanitize(v) for v in value), key=str)
    return str(value)


def dumps(value: Any, indent: int | None = 2) -> str:
    """``json.dumps`` that always produces strict JSON (``allow_nan=False`` after :func:`sanitize`)."""
    return json.dumps(sanitize(value), indent=indent, allow_nan=False)
