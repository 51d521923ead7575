"""What a rule is, once parsed and validated."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from services.monitor.matchers import Matcher, MatchOp


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"
    EMERGENCY = "emergency"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)


class Health(StrEnum):
    OK = "ok"
    NODATA = "nodata"
    ERROR = "error"


class NoDataPolicy(StrEnum):
    NODATA = "nodata"  # the rule shows NoData: absence is itself worth seeing
    OK = "ok"  # absence means nothing is wrong (e.g. no 5xx counter yet)


RANGE_FUNCTIONS = frozenset(
    {"rate", "increase", "delta", "avg_over_time", "max_over_time", "min_over_time"}
)
AGGREGATIONS = frozenset({"sum", "avg", "max", "min", "count"})
COMPARISONS = frozenset({">", ">=", "<", "<=", "==", "!="})


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[Matcher, ...] = ()

    @property
    def equal_pairs(self) -> tuple[tuple[str, str], ...]:
        """Equality matchers with a non-empty value: answerable from the index."""
        return tuple((m.name, m.value) for m in self.matchers if m.op is MatchOp.EQ and m.value)

    @property
    def other_matchers(self) -> tuple[Matcher, ...]:
        return tuple(m for m in self.matchers if m.op is not MatchOp.EQ or not m.value)


@dataclass(frozen=True)
class Expr:
    """``[agg [by|without (labels)]] (fn(selector[window]) | selector) op threshold``."""

    selector: Selector
    op: str
    threshold: float
    func: str | None = None
    window: float | None = None
    agg: str | None = None
    grouping: tuple[str, ...] = ()
    without: bool = False


@dataclass(frozen=True)
class Rule:
    name: str
    expr: Expr
    expr_text: str
    severity: Severity
    for_seconds: float = 0.0
    keep_firing_for: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    no_data: NoDataPolicy = NoDataPolicy.NODATA
    source: str = ""

    def alert_labels(self, series_labels: dict[str, str]) -> dict[str, str]:
        """Series labels, overridden by the rule's labels, name and severity."""
        return {
            **series_labels,
            **self.labels,
            "alertname": self.name,
            "severity": self.severity.value,
        }
