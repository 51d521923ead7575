"""Durations written as ``90s``, ``5m``, ``1h30m``, ``2d`` or plain seconds."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+$")


def parse_duration(value: Any) -> float:
    """Seconds in ``value``; raise ValueError for anything else or a negative."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or text like 5m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and DURATION.match(value.strip()):
        seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(value.strip()))
    elif isinstance(value, str) and re.fullmatch(r"\d+(?:\.\d+)?", value.strip()):
        seconds = float(value)
    else:
        raise ValueError(f"invalid duration {value!r}; use e.g. 30s, 5m, 1h30m")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def format_duration(seconds: float) -> str:
    """Compact form, e.g. ``1h5m`` or ``30s``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    out = []
    rest = round(seconds)
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out) or "0s"


Duration = Annotated[float, BeforeValidator(parse_duration)]
