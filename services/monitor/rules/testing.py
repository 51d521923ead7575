"""Rule unit tests, in the spirit of promtool: given series over time, expect alerts.

A test file lists input series in expanding notation (``1+2x3`` is ``1 3 5 7``,
``_`` is a missing sample, ``0x4`` is five zeros), optional collector failures,
and the alerts expected at given times. The real store, evaluator and state machine
run over a simulated clock, so what passes here is what the monitor will do.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from services.monitor.lifecycle import NOTIFIABLE, AlertState, Tracker
from services.monitor.rules.durations import Duration
from services.monitor.rules.evaluate import Sources, evaluate_rule
from services.monitor.rules.loader import (
    RuleLoadError,
    check_unique,
    load_file,
    read_yaml,
    rules_from_data,
)
from services.monitor.rules.model import Rule
from services.monitor.rules.parser import parse_expr
from services.monitor.samples import Sample
from services.monitor.store import SeriesStore

_STEP = re.compile(
    r"^(_|[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)(?:([-+]\d*\.?\d+(?:[eE][-+]?\d+)?)?x(\d+))?$"
)


class InputSeries(BaseModel):
    model_config = ConfigDict(extra="forbid")
    series: str
    values: Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, int | float) else v)]
    collector: str = "test"


class FailingCollector(BaseModel):
    model_config = ConfigDict(extra="forbid")
    collector: str
    start: Duration = 0.0
    end: Duration = float("inf")
    error: str = "collector failed"
    absent: bool = False  # the source is not there (NoData) rather than failing (Error)


class ExpectedAlert(BaseModel):
    model_config = ConfigDict(extra="forbid")
    exp_labels: dict[str, str] = {}
    exp_annotations: dict[str, str] = {}
    exp_state: AlertState = AlertState.FIRING


class AlertCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")
    eval_time: Duration
    alertname: str
    exp_alerts: list[ExpectedAlert] = []


class TestCase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = ""
    interval: Duration | None = None
    input_series: list[InputSeries] = []
    failing_collectors: list[FailingCollector] = []
    alert_rule_test: list[AlertCheck] = []


class TestFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rule_files: list[str] = []
    evaluation_interval: Duration = 15.0
    rules: list[Any] = []
    tests: list[TestCase] = []


@dataclass
class Report:
    rules: int
    tests: int
    failed: int
    failures: list[str]


def expand_values(text: str) -> list[float | None]:
    """``"1+1x2 _ 5x1"`` -> ``[1, 2, 3, None, 5, 5]``."""
    out: list[float | None] = []
    for token in text.split():
        found = _STEP.match(token)
        if found is None:
            raise ValueError(f"cannot read value {token!r}")
        base, step, times = found.group(1), found.group(2), found.group(3)
        count = int(times) + 1 if times is not None else 1
        if base == "_":
            out.extend([None] * count)
            continue
        start, inc = float(base), float(step) if step else 0.0
        out.extend(start + inc * i for i in range(count))
    return out


def _parse_series(spec: InputSeries) -> tuple[str, dict[str, str], list[float | None]]:
    expr = parse_expr(f"{spec.series} > 0")
    labels = {m.name: m.value for m in expr.selector.matchers}
    if len(labels) != len(expr.selector.matchers) or any(
        m.op.value != "=" for m in expr.selector.matchers
    ):
        raise ValueError(f"input series {spec.series!r} may only use = labels")
    return expr.selector.metric, labels, expand_values(spec.values)


def _actual(tracker: Tracker, alertname: str) -> list[tuple[dict[str, str], dict[str, str], str]]:
    return [
        (a.labels, a.refresh().annotations, a.state.value)
        for a in tracker.open.values()
        if a.rule == alertname and a.state in NOTIFIABLE
    ]


def _compare(check: AlertCheck, tracker: Tracker) -> str | None:
    actual = _actual(tracker, check.alertname)
    keep_severity = any("severity" in e.exp_labels for e in check.exp_alerts)

    def norm(
        labels: dict[str, str], annotations: dict[str, str], state: str, with_ann: bool
    ) -> str:
        shown = {
            k: v
            for k, v in labels.items()
            if k != "alertname" and (keep_severity or k != "severity")
        }
        return repr(
            (sorted(shown.items()), sorted(annotations.items()) if with_ann else None, state)
        )

    with_ann = any(e.exp_annotations for e in check.exp_alerts)
    want = Counter(
        norm(e.exp_labels, e.exp_annotations, e.exp_state.value, with_ann) for e in check.exp_alerts
    )
    got = Counter(norm(lab, ann, st, with_ann) for lab, ann, st in actual)
    if want == got:
        return None
    return (
        f"{check.alertname} at {check.eval_time:g}s:\n"
        f"    expected {sorted(want.elements())}\n    got      {sorted(got.elements())}"
    )


def run_case(case: TestCase, rules: list[Rule], default_interval: float) -> list[str]:
    """Run one test case; return its failure messages."""
    interval = case.interval or default_interval
    series = [(_parse_series(s), s.collector) for s in case.input_series]
    checks = sorted(case.alert_rule_test, key=lambda c: c.eval_time)
    end = checks[-1].eval_time if checks else 0.0
    windows = [r.expr.window or 0.0 for r in rules]
    store = SeriesStore(retention=max(windows, default=0.0) + interval * 2)
    for (name, _, _), collector in series:
        store.origin[name] = collector  # what a collector's declared metrics do in service
    tracker = Tracker(new_id=uuid.uuid4)
    failures: list[str] = []
    step = 0
    while step * interval <= end + 1e-9:
        now = step * interval
        _feed(store, series, case.failing_collectors, step, now)
        sources = _sources(case.failing_collectors, now)
        for rule in rules:
            tracker.apply(rule, evaluate_rule(rule, store, sources, now), now)
        while checks and checks[0].eval_time < now + interval - 1e-9:
            message = _compare(checks.pop(0), tracker)
            if message:
                failures.append(message)
        step += 1
    return failures


def _feed(
    store: SeriesStore,
    series: list[tuple[tuple[str, dict[str, str], list[float | None]], str]],
    failing: list[FailingCollector],
    step: int,
    now: float,
) -> None:
    batches: dict[str, list[Sample]] = {}
    for (name, labels, values), collector in series:
        batch = batches.setdefault(collector, [])
        value = values[step] if step < len(values) else None
        if value is not None:
            batch.append(Sample(name, value, labels))
    down = {f.collector for f in failing if f.start <= now < f.end}
    for collector, batch in batches.items():
        if collector in down:
            store.mark_failed(collector, now)
        else:
            store.ingest(collector, batch, now)


def _sources(failing: list[FailingCollector], now: float) -> Sources:
    active = [f for f in failing if f.start <= now < f.end]
    return Sources(
        failed={f.collector: f.error for f in active if not f.absent},
        absent={f.collector: f.error for f in active if f.absent},
        produces={},
    )


def run_file(path: Path) -> Report:
    """Validate the rules a file holds or names, and run its tests."""
    data = read_yaml(path)
    try:
        spec = TestFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RuleLoadError(f"{path}: {where}: {first['msg']}") from None
    rules = rules_from_data(data, str(path)) if spec.rules else []
    for name in spec.rule_files:
        rules.extend(load_file(path.parent / name))
    check_unique(rules)
    failures: list[str] = []
    failed = 0
    for i, case in enumerate(spec.tests):
        label = case.name or f"test #{i + 1}"
        try:
            messages = run_case(case, rules, spec.evaluation_interval)
        except ValueError as exc:
            messages = [str(exc)]
        failed += bool(messages)
        failures.extend(f"{label}: {m}" for m in messages)
    return Report(len(rules), len(spec.tests), failed, failures)
