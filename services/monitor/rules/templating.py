"""Annotation templates: ``{{ $labels.instance }}``, ``{{ $value | percent }}``.

A deliberately tiny language (variables and one filter) so a rule file can never
run code; templates are checked when rules load, not when an alert fires.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from services.monitor.rules.durations import format_duration

_PLACEHOLDER = re.compile(r"\{\{\s*(\$[a-zA-Z_][a-zA-Z0-9_.]*)\s*(?:\|\s*([a-z_]+)\s*)?\}\}")
_VARIABLE = re.compile(r"^\$(value|rule|labels\.[a-zA-Z_][a-zA-Z0-9_]*)$")


def _number(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def _humanize(value: float) -> str:
    for size, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return _number(round(value, 3))


def _bytes(value: float) -> str:
    for size, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(value) >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.0f} B"


FILTERS: dict[str, Callable[[float], str]] = {
    "humanize": _humanize,
    "percent": lambda v: f"{v * 100:.1f}%",
    "duration": format_duration,
    "bytes": _bytes,
    "round": lambda v: _number(round(v, 2)),
}


class TemplateError(ValueError):
    """A template naming an unknown variable or filter."""


def check(template: str) -> None:
    """Raise TemplateError for placeholders that could never render."""
    for found in _PLACEHOLDER.finditer(template):
        var, filt = found.group(1), found.group(2)
        if not _VARIABLE.match(var):
            raise TemplateError(f"unknown variable {var} (use $value, $rule or $labels.NAME)")
        if filt is not None and (filt not in FILTERS or var != "$value"):
            raise TemplateError(f"filter {filt!r} is unknown or not applied to $value")
    rest = _PLACEHOLDER.sub("", template)
    if "{{" in rest or "}}" in rest:
        raise TemplateError(f"malformed placeholder in {template!r}")


def render(template: str, rule: str, labels: dict[str, str], value: float | None) -> str:
    """Fill a checked template; labels that are missing render empty."""
    if "{{" not in template:
        return template

    def fill(found: re.Match[str]) -> str:
        var, filt = found.group(1), found.group(2)
        if var == "$rule":
            return rule
        if var == "$value":
            if value is None:
                return "n/a"
            return FILTERS[filt](value) if filt else _number(value)
        return labels.get(var.removeprefix("$labels."), "")

    return _PLACEHOLDER.sub(fill, template)
