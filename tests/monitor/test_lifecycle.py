"""The alert state machine, driven by evaluations at explicit times."""

from __future__ import annotations

from services.monitor.lifecycle import AlertState, Tracker, fingerprint
from services.monitor.rules.evaluate import RuleResult
from services.monitor.rules.loader import rules_from_data
from services.monitor.rules.model import Health, Rule


def rule(**fields: object) -> Rule:
    spec = {
        "name": "Hot",
        "expr": "temp > 30",
        "severity": "warning",
        "annotations": {"summary": "{{ $labels.room }} at {{ $value }}"},
        **fields,
    }
    (r,) = rules_from_data({"rules": [spec]}, "t")
    return r


def hot(*rooms: str, value: float = 31) -> RuleResult:
    return RuleResult(Health.OK, [({"room": r}, value) for r in rooms], series=len(rooms))


def states(tracker: Tracker) -> dict[str, str]:
    return {
        a.labels.get("room", a.labels.get("alertstate", "")): a.state.value
        for a in tracker.open.values()
    }


def test_pending_then_firing_after_for_and_back_to_inactive() -> None:
    r, t = rule(**{"for": "1m"}), Tracker()
    t.apply(r, hot("a", "b"), 0)
    assert states(t) == {"a": "pending", "b": "pending"}
    changed, _ = t.drain()
    assert len(changed) == 2
    t.apply(r, hot("a"), 30)  # b stops matching while pending: it never fired
    _, deleted = t.drain()
    assert len(deleted) == 1
    assert states(t) == {"a": "pending"}
    t.apply(r, hot("a", value=35), 59)
    assert states(t) == {"a": "pending"}
    t.apply(r, hot("a", value=36), 60)
    (alert,) = t.open.values()
    assert (alert.state, alert.fired_at, alert.active_at) == (AlertState.FIRING, 60, 0)
    assert alert.refresh().annotations == {"summary": "a at 36"}
    assert alert.labels == {"room": "a", "alertname": "Hot", "severity": "warning"}
    assert alert.fingerprint == fingerprint(alert.labels)
    t.apply(r, hot(), 75)
    assert t.open == {}
    assert alert.state is AlertState.RESOLVED
    assert alert.resolved_at == 75
    assert alert.resolved_by == "rule"
    changed, _ = t.drain()
    assert alert in changed


def test_keep_firing_for_rides_out_a_flap() -> None:
    r, t = rule(keep_firing_for="45s"), Tracker()
    t.apply(r, hot("a"), 0)
    (alert,) = t.open.values()
    assert alert.state is AlertState.FIRING  # no for: fires at once
    t.apply(r, hot(), 15)
    t.apply(r, hot(), 30)
    assert alert.state is AlertState.FIRING
    t.apply(r, hot("a"), 45)  # back: the same episode continues
    t.apply(r, hot(), 60)
    t.apply(r, hot(), 75)
    assert alert.state is AlertState.FIRING
    t.apply(r, hot(), 90)
    assert alert.state is AlertState.RESOLVED
    assert alert.resolved_at == 90


def test_error_and_nodata_are_explicit_and_freeze_series_alerts() -> None:
    r, t = rule(annotations={"runbook_url": "http://runbook"}), Tracker()
    t.apply(r, hot("a"), 0)
    t.apply(r, RuleResult(Health.ERROR, error="collector x failed: ConnectionError"), 15)
    assert states(t) == {"a": "firing", "error": "error"}
    err = next(a for a in t.open.values() if a.state is AlertState.ERROR)
    assert "ConnectionError" in err.annotations["description"]
    assert err.annotations["runbook_url"] == "http://runbook"
    assert err.labels == {"alertname": "Hot", "severity": "warning", "alertstate": "error"}
    t.apply(r, RuleResult(Health.NODATA, error="no series"), 30)
    assert states(t) == {"a": "firing", "nodata": "nodata"}
    assert err.state is AlertState.RESOLVED
    t.apply(r, hot("a"), 45)
    assert states(t) == {"a": "firing"}


def test_manual_resolve_starts_a_new_episode_and_ack_is_per_episode() -> None:
    r, t = rule(), Tracker()
    t.apply(r, hot("a"), 0)
    (first,) = t.open.values()
    t.acknowledge(first, 5, "ops")
    assert (first.acknowledged_at, first.acknowledged_by) == (5, "ops")
    t.resolve(first, 10, "ops")
    assert first.state is AlertState.RESOLVED
    assert first.resolved_by == "manual:ops"
    assert t.find(first.id) is None
    t.apply(r, hot("a"), 15)
    (second,) = t.open.values()
    assert second.id != first.id
    assert second.fingerprint == first.fingerprint
    assert second.acknowledged_at is None


def test_alerts_of_removed_rules_are_retired() -> None:
    r, t = rule(), Tracker()
    t.apply(r, hot("a"), 0)
    (alert,) = t.open.values()
    t.retire({"Other"}, 20)
    assert alert.state is AlertState.RESOLVED
    assert alert.resolved_by == "rule_removed"
    fresh = Tracker()
    fresh.load([alert])
    assert fresh.open == {}
