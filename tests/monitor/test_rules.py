"""Rule expressions, evaluation, templates, rule files and the rule unit-test runner."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest

from services.cli.main import main as tgflow
from services.monitor.cli import check_rules
from services.monitor.rules.durations import format_duration, parse_duration
from services.monitor.rules.evaluate import Sources, evaluate_expr, evaluate_rule
from services.monitor.rules.loader import (
    DEFAULT_RULES,
    RuleLoadError,
    load_file,
    load_rules,
    rules_from_data,
)
from services.monitor.rules.model import Health
from services.monitor.rules.parser import ExprError, parse_expr
from services.monitor.rules.templating import TemplateError, check, render
from services.monitor.rules.testing import expand_values
from services.monitor.samples import Sample
from services.monitor.store import SeriesStore

NO_SOURCES = Sources(failed={}, absent={}, produces={})


def store_with(points: dict[str, list[tuple[dict[str, str], list[float]]]], step: float = 15):
    """A store fed ``points[name] = [(labels, values over time)]`` at ``step`` spacing."""
    store = SeriesStore(retention=3600)
    length = max(len(v) for series in points.values() for _, v in series)
    for i in range(length):
        batch = [
            Sample(name, values[i], labels)
            for name, series in points.items()
            for labels, values in series
            if i < len(values)
        ]
        store.ingest("c", batch, i * step)
    return store, (length - 1) * step


@pytest.mark.parametrize(
    ("text", "metric", "func", "window", "agg", "grouping"),
    [
        ("up == 0", "up", None, None, None, ()),
        ('x{a="b", c=~"d|e",} >= 1.5', "x", None, None, None, ()),
        ("rate(x_total[5m]) > 2", "x_total", "rate", 300.0, None, ()),
        ("sum by (q) (increase(x[1h30m])) > 1e3", "x", "increase", 5400.0, "sum", ("q",)),
        ("max(x) without (instance) < -1", "x", None, None, "max", ("instance",)),
        ("sum(x) > 0", "x", None, None, "sum", ()),
        ("sum > 0", "sum", None, None, None, ()),
    ],
)
def test_expressions_parse(
    text: str,
    metric: str,
    func: str | None,
    window: float | None,
    agg: str | None,
    grouping: tuple[str, ...],
) -> None:
    expr = parse_expr(text)
    assert (expr.selector.metric, expr.func, expr.window, expr.agg, expr.grouping) == (
        metric,
        func,
        window,
        agg,
        grouping,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("up", "end of expression"),
        ("up > 5m", "expected number"),
        ("up > 1 and 2", "after the threshold"),
        ("floor(up[5m]) > 1", "unknown function 'floor'"),
        ('up{a=~"("} > 1', "invalid regular expression"),
        ("rate(up) > 1", "expected ["),
        ("up + 1 > 2", "unexpected character"),
        ("up = 1", "expected a comparison"),
    ],
)
def test_bad_expressions_say_why(text: str, message: str) -> None:
    with pytest.raises(ExprError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_expr(text)


def test_durations() -> None:
    assert parse_duration("1h30m") == 5400
    assert parse_duration("250ms") == 0.25
    assert parse_duration(90) == 90
    assert parse_duration("42") == 42
    assert format_duration(3725) == "1h2m5s"
    for bad in ("5 minutes", "-5s", True, "m5"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def test_matchers_select_by_every_operator() -> None:
    store, now = store_with(
        {
            "q": [
                ({"queue": "ai", "env": "prod"}, [5]),
                ({"queue": "control", "env": "prod"}, [7]),
                ({"queue": "telegram", "env": "dev"}, [9]),
            ]
        }
    )

    def hits(text: str) -> list[str]:
        _, out = evaluate_expr(parse_expr(text), store, now)
        return sorted(labels["queue"] for labels, _ in out)

    assert hits('q{env="prod"} > 0') == ["ai", "control"]
    assert hits('q{env!="prod"} > 0') == ["telegram"]
    assert hits('q{queue=~"a.|tele.*"} > 0') == ["ai", "telegram"]
    assert hits('q{queue!~"a.*"} > 6') == ["control", "telegram"]
    assert hits('q{queue=~"i"} > 0') == []  # regexes are anchored
    assert hits('q{missing=""} > 0') == ["ai", "control", "telegram"]
    assert hits('q{env="prod", queue="ai"} > 0') == ["ai"]
    assert hits('q{env="nope"} > 0') == []


def test_rate_and_increase_survive_a_counter_reset() -> None:
    # 10/step, then the process restarts and counts from 0 again.
    store, now = store_with({"c_total": [({}, [0, 10, 20, 30, 5, 15])]})
    _, out = evaluate_expr(parse_expr("rate(c_total[10m]) > 0"), store, now)
    ((_, rate),) = out
    assert rate == pytest.approx((10 + 10 + 10 + 5 + 10) / 75)
    _, out = evaluate_expr(parse_expr("increase(c_total[1m]) > 0"), store, now)
    # The last minute holds the points at 30, 45, 60, 75 s: 30 -> 5 (reset) -> 15.
    assert out[0][1] == pytest.approx((5 + 10 + 10) / 45 * 60)
    _, out = evaluate_expr(parse_expr("delta(c_total[1m]) > -100"), store, now)
    assert out[0][1] == 15 - 20


def test_over_time_functions_and_aggregation() -> None:
    store, now = store_with(
        {
            "g": [
                ({"host": "a", "cpu": "0"}, [0.2, 0.4, 0.9]),
                ({"host": "a", "cpu": "1"}, [0.1, 0.1, 0.1]),
                ({"host": "b", "cpu": "0"}, [0.5, 0.5, 0.5]),
            ]
        }
    )
    _, out = evaluate_expr(parse_expr('avg_over_time(g{host="a"}[1m]) > 0'), store, now)
    assert sorted(v for _, v in out) == pytest.approx([0.1, 0.5])
    _, out = evaluate_expr(parse_expr("max_over_time(g[20s]) >= 0.5"), store, now)
    assert sorted(v for _, v in out) == [0.5, 0.9]  # the window holds the last 2 points
    _, out = evaluate_expr(parse_expr("sum by (host) (g) > 0"), store, now)
    assert sorted((labels["host"], round(v, 6)) for labels, v in out) == [("a", 1.0), ("b", 0.5)]
    assert all(set(labels) == {"host"} for labels, _ in out)
    _, out = evaluate_expr(parse_expr("count without (cpu) (g) == 2"), store, now)
    assert out == [({"host": "a"}, 2.0)]
    _, out = evaluate_expr(parse_expr("min(g) < 1"), store, now)
    assert out == [({}, 0.1)]


def test_a_range_function_needs_two_points_and_then_has_data() -> None:
    store, now = store_with({"c_total": [({}, [3])]})
    (rule,) = rules_from_data(
        {"rules": [{"name": "R", "expr": "rate(c_total[5m]) > 0", "severity": "info"}]}, "t"
    )
    result = evaluate_rule(rule, store, NO_SOURCES, now)
    assert (result.health, result.matches, result.series) == (Health.OK, [], 1)


def test_health_error_nodata_and_ok() -> None:
    rules = rules_from_data(
        {
            "rules": [
                {"name": "A", "expr": "a > 1", "severity": "warning"},
                {"name": "B", "expr": "b > 1", "severity": "warning", "no_data": "ok"},
                {"name": "C", "expr": "c > 1", "severity": "warning", "no_data": "ok"},
            ]
        },
        "t",
    )
    store = SeriesStore(retention=60)
    store.ingest("one", [Sample("a", 5)], 0)
    sources = Sources(failed={}, absent={"three": "table missing"}, produces={"c": "three"})
    a, b, c = (evaluate_rule(r, store, sources, 0) for r in rules)
    assert a.health is Health.OK
    assert a.matches == [({}, 5.0)]
    assert b.health is Health.OK
    assert b.matches == []
    assert c.health is Health.NODATA
    assert "table missing" in (c.error or "")
    # The collector fails: its series go stale and the rule is in Error, not quiet.
    store.mark_failed("one", 15)
    failed = Sources(failed={"one": "ConnectionError"}, absent={}, produces={})
    a2 = evaluate_rule(rules[0], store, failed, 15)
    assert a2.health is Health.ERROR
    assert "ConnectionError" in (a2.error or "")
    # It recovers but no longer reports the series: NoData.
    store.ingest("one", [], 30)
    a3 = evaluate_rule(rules[0], store, NO_SOURCES, 30)
    assert a3.health is Health.NODATA


def test_templates_render_and_are_checked() -> None:
    labels = {"instance": "w1"}
    assert render("{{ $labels.instance }} at {{ $value | percent }}", "R", labels, 0.934) == (
        "w1 at 93.4%"
    )
    assert render("{{$value|humanize}} / {{ $value }}", "R", {}, 12345.0) == "12.3k / 12345"
    assert render("{{ $value | bytes }}", "R", {}, 3 * 2**30) == "3 GiB"
    assert render("{{ $value | duration }} {{ $rule }}", "R", {}, 400) == "6m40s R"
    assert render("{{ $labels.nope }}|{{ $value }}", "R", {}, None) == "|n/a"
    assert render("{{ $value }}", "R", {}, math.inf) == "inf"
    for bad in (
        "{{ $labels }}",
        "{{ $value | shout }}",
        "{{ $foo }}",
        "{{ oops",
        "{{ $labels.x | percent }}",
    ):
        with pytest.raises(TemplateError):
            check(bad)


def _one_rule(**fields: object) -> dict[str, object]:
    return {"rules": [{"name": "R", "expr": "x > 1", "severity": "warning", **fields}]}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"severity": "page"}, "severity"),
        ({"labels": {"alertname": "x"}}, "set by the monitor"),
        ({"labels": {"bad-name": "x"}}, "invalid label name"),
        ({"annotations": {"summary": "{{ $valu }}"}}, "annotation summary"),
        ({"expr": "x >"}, "expected number"),
        ({"for": "soon"}, "invalid duration"),
        ({"surprise": 1}, "Extra inputs"),
        ({"name": "has space"}, "letters, digits"),
    ],
)
def test_rule_errors_name_the_file_and_rule(fields: dict[str, object], message: str) -> None:
    with pytest.raises(RuleLoadError, match=f"^f.yaml: rule .*{message}"):
        rules_from_data(_one_rule(**fields), "f.yaml")


def test_rule_files_and_directories_load_with_the_defaults(tmp_path: Path) -> None:
    default = load_rules()
    assert len(default) >= 19
    (tmp_path / "a.yaml").write_text("rules:\n  - {name: Mine, expr: 'x > 1', severity: info}\n")
    (tmp_path / "ignored.txt").write_text("not yaml: [")
    assert [r.name for r in load_rules(str(tmp_path))][-1] == "Mine"
    (tmp_path / "b.yaml").write_text(
        "rules:\n  - {name: RedisDown, expr: 'x > 1', severity: info}\n"
    )
    with pytest.raises(RuleLoadError, match="RedisDown is defined twice"):
        load_rules(str(tmp_path))
    (tmp_path / "c.yaml").write_text("rules: [")
    with pytest.raises(RuleLoadError, match="not valid YAML"):
        load_file(tmp_path / "c.yaml")
    with pytest.raises(RuleLoadError, match="cannot read"):
        load_file(tmp_path / "missing.yaml")


def test_the_default_rules_cover_the_earlier_systems_and_tgflows_own() -> None:
    names = {r.name for r in load_file(DEFAULT_RULES)}
    assert {
        "DBPoolSaturated",
        "DBPoolFewFree",
        "DBSlowQueries",
        "RedisDown",
        "RedisMemoryHigh",
        "RedisHitRateLow",
        "RedisOpsHigh",
        "HostMemoryHigh",
        "HostCPUHigh",
        "HostDiskFull",
        "TooManyAlertsFiring",
        "HTTP5xxHigh",
        "HTTPSlowRequests",
        "QueueBacklogGrowing",
        "NoLiveWorker",
        "ShardsUnowned",
        "AccountDisabled",
        "FloodWaitLong",
        "DeadLettersRising",
        "WebhookDeliveriesFailing",
        "WebhookBacklogHigh",
    } <= names


def test_expanding_notation() -> None:
    assert expand_values("1+1x2 _ 5x1 -2-1x1 _x1") == [1, 2, 3, None, 5, 5, -2, -3, None, None]
    with pytest.raises(ValueError, match="cannot read"):
        expand_values("1 two")


def test_check_rules_runs_the_shipped_tests_and_reports_failures(tmp_path: Path) -> None:
    out = io.StringIO()
    assert check_rules([str(DEFAULT_RULES.with_name("default_test.yaml"))], out) == 0
    assert out.getvalue().startswith("OK ")
    assert "tests passed" in out.getvalue()
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(
        """
rules:
  - name: Hot
    expr: temp > 30
    for: 1m
    severity: warning
    annotations: {summary: "{{ $labels.room }} is {{ $value }}"}
tests:
  - name: fires after a minute
    input_series:
      - {series: 'temp{room="a"}', values: "31x8"}
    alert_rule_test:
      - eval_time: 30s
        alertname: Hot
        exp_alerts: [{exp_labels: {room: a}}]
      - eval_time: 1m
        alertname: Hot
        exp_alerts:
          - exp_labels: {room: a}
            exp_annotations: {summary: a is 30}
"""
    )
    out = io.StringIO()
    assert check_rules([str(wrong)], out) == 1
    text = out.getvalue()
    assert "FAILED" in text
    assert "1 of 1 tests" in text
    assert "Hot at 30s" in text  # still pending at 30 s, so nothing fires
    assert "Hot at 60s" in text
    assert "a is 31" in text
    broken = tmp_path / "broken.yaml"
    broken.write_text("rules:\n  - {name: X, expr: 'x >', severity: info}\n")
    out = io.StringIO()
    assert check_rules([str(broken)], out) == 1
    assert "rule X" in out.getvalue()


def test_cli_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        tgflow(["monitor", "check-rules", str(DEFAULT_RULES.with_name("default_test.yaml"))]) == 0
    )
    assert "tests passed" in capsys.readouterr().out
