"""Rule evaluation: pure functions from the series store to matching label sets."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from services.monitor.rules.model import Expr, Health, NoDataPolicy, Rule, Selector
from services.monitor.samples import LabelKey
from services.monitor.store import Series, SeriesStore

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


@dataclass
class RuleResult:
    """One evaluation: the rule's health and the label sets whose condition holds."""

    health: Health
    matches: list[tuple[dict[str, str], float]] = field(default_factory=list)
    error: str | None = None
    series: int = 0


@dataclass(frozen=True)
class Sources:
    """What the evaluator needs to know about the collectors behind the samples."""

    failed: Mapping[str, str]  # collector -> error
    absent: Mapping[str, str]  # collector -> why its source is not there
    produces: Mapping[str, str]  # metric name -> collector that declares it

    def collector_of(self, metric: str, store: SeriesStore) -> str | None:
        return self.produces.get(metric) or store.origin.get(metric)


def select(store: SeriesStore, selector: Selector) -> list[Series]:
    """Current series of the selector's metric that satisfy every matcher."""
    found = store.candidates(selector.metric, selector.equal_pairs)
    batch = store.batch_at
    current = [s for s in found if s.last_seen == batch.get(s.collector)]
    others = selector.other_matchers
    if not others:
        return current
    if len(others) == 1:
        match = others[0].matches
        return [s for s in current if match(s.labels)]
    return [s for s in current if all(m.matches(s.labels) for m in others)]


def _counter_increase(values: list[float]) -> float:
    following = values[1:]
    if all(map(operator.le, values, following)):  # no reset: the common case, in C
        return values[-1] - values[0]
    # A drop is a restart from zero: count the new value as the increase.
    return sum(b - a if b >= a else b for a, b in zip(values, following, strict=False))


def _range_value(func: str, times: list[float], values: list[float], window: float) -> float | None:
    if func in ("avg_over_time", "max_over_time", "min_over_time"):
        if not values:
            return None
        if func == "avg_over_time":
            return sum(values) / len(values)
        return max(values) if func == "max_over_time" else min(values)
    if len(values) < 2:
        return None
    if func == "delta":
        return values[-1] - values[0]
    span = times[-1] - times[0]
    rate = _counter_increase(values) / span if span > 0 else 0.0
    return rate if func == "rate" else rate * window


def _values(expr: Expr, series: list[Series], now: float) -> list[tuple[dict[str, str], float]]:
    if expr.func is None:
        return [(s.labels, s.values[-1]) for s in series]
    assert expr.window is not None
    out = []
    start, func, window = now - expr.window, expr.func, expr.window
    for s in series:
        times, values = s.window(start, now)
        value = _range_value(func, times, values, window)
        if value is not None:
            out.append((s.labels, value))
    return out


def _aggregate(
    expr: Expr, values: list[tuple[dict[str, str], float]]
) -> list[tuple[dict[str, str], float]]:
    groups: dict[tuple[str | None, ...] | LabelKey, tuple[dict[str, str], list[float]]] = {}
    grouping = expr.grouping
    for labels, value in values:
        key: tuple[str | None, ...] | LabelKey
        if expr.without:
            key = tuple(sorted((k, v) for k, v in labels.items() if k not in grouping))
        else:
            key = tuple(labels.get(k) for k in grouping)  # the order of "by" is fixed
        group = groups.get(key)
        if group is None:
            if expr.without:
                kept = {k: v for k, v in labels.items() if k not in grouping}
            else:
                kept = {k: labels[k] for k in grouping if k in labels}
            group = groups[key] = (kept, [])
        group[1].append(value)
    out = []
    for key_labels, vals in groups.values():
        if expr.agg == "sum":
            result = sum(vals)
        elif expr.agg == "avg":
            result = sum(vals) / len(vals)
        elif expr.agg == "max":
            result = max(vals)
        elif expr.agg == "min":
            result = min(vals)
        else:
            result = float(len(vals))
        out.append((key_labels, result))
    return out


def evaluate_expr(
    expr: Expr, store: SeriesStore, now: float
) -> tuple[int, list[tuple[dict[str, str], float]]]:
    """How many series the selector found, and the (labels, value) pairs that pass."""
    series = select(store, expr.selector)
    values = _values(expr, series, now)
    if expr.agg is not None and values:
        values = _aggregate(expr, values)
    compare = _COMPARE[expr.op]
    return len(series), [(labels, v) for labels, v in values if compare(v, expr.threshold)]


def evaluate_rule(rule: Rule, store: SeriesStore, sources: Sources, now: float) -> RuleResult:
    """Evaluate one rule; a failed collector gives Error, missing data gives NoData."""
    collector = sources.collector_of(rule.expr.selector.metric, store)
    if collector is not None and collector in sources.failed:
        return RuleResult(
            Health.ERROR, error=f"collector {collector} failed: {sources.failed[collector]}"
        )
    found, matches = evaluate_expr(rule.expr, store, now)
    if found:
        return RuleResult(Health.OK, matches, series=found)
    # A missing source is NoData whatever the rule's policy: absence there is not health.
    if collector is not None and collector in sources.absent:
        return RuleResult(Health.NODATA, error=f"source not present: {sources.absent[collector]}")
    if rule.no_data is NoDataPolicy.OK:
        return RuleResult(Health.OK)
    return RuleResult(Health.NODATA, error=f"no series of {rule.expr.selector.metric} match")
