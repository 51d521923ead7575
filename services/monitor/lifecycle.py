"""The alert state machine: pending -> firing -> resolved, with NoData and Error.

Pure and in memory: ``Tracker.apply`` takes a rule's evaluation and the time, and
records which episodes changed; ``repository`` persists them. An episode is one
stretch from first match to resolution; its fingerprint is the rule plus labels.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from services.monitor.rules import templating
from services.monitor.rules.evaluate import RuleResult
from services.monitor.rules.model import Health, Rule
from shared.ids import uuid7


class AlertState(StrEnum):
    PENDING = "pending"
    FIRING = "firing"
    NODATA = "nodata"
    ERROR = "error"
    RESOLVED = "resolved"


NOTIFIABLE = frozenset({AlertState.FIRING, AlertState.NODATA, AlertState.ERROR})


def fingerprint(labels: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for name, value in sorted(labels.items()):
        digest.update(f"{name}\x00{value}\x01".encode())
    return digest.hexdigest()[:16]


@dataclass
class Alert:
    id: uuid.UUID
    fingerprint: str
    rule: str
    severity: str
    state: AlertState
    labels: dict[str, str]
    annotations: dict[str, str]
    value: float | None
    active_at: float
    last_true_at: float
    updated_at: float
    fired_at: float | None = None
    resolved_at: float | None = None
    resolved_by: str | None = None
    acknowledged_at: float | None = None
    acknowledged_by: str | None = None
    # Not persisted: set by the dispatcher each cycle, and by the rule's evaluation.
    muted_by: list[str] = field(default_factory=list)
    templates: dict[str, str] | None = field(default=None, repr=False)
    rendered_value: float | None = field(default=None, repr=False)

    @property
    def is_open(self) -> bool:
        return self.state is not AlertState.RESOLVED

    def refresh(self) -> Alert:
        """Re-render annotations for the current value. Done when they are read (API,
        notification, persistence) rather than at every evaluation, which is hot."""
        value = self.value
        if self.templates is not None and value is not None and self.rendered_value != value:
            self.annotations = _render(self.templates, self.rule, self.labels, value)
            self.rendered_value = value
        return self


def _special_annotations(rule: Rule, health: Health, reason: str) -> dict[str, str]:
    what = "has no data" if health is Health.NODATA else "cannot be evaluated"
    out = {"summary": f"{rule.name} {what}", "description": reason}
    if "runbook_url" in rule.annotations:
        out["runbook_url"] = rule.annotations["runbook_url"]
    return out


class Tracker:
    """Open alerts by fingerprint, and the changes not yet persisted."""

    def __init__(self, new_id: Callable[[], uuid.UUID] = uuid7) -> None:
        self.new_id = new_id
        self.open: dict[str, Alert] = {}
        self.by_rule: dict[str, set[str]] = {}
        self.changed: dict[uuid.UUID, Alert] = {}
        self.deleted: set[uuid.UUID] = set()

    def load(self, alerts: Iterable[Alert]) -> None:
        for alert in alerts:
            if alert.is_open:
                self._add(alert)

    def _add(self, alert: Alert) -> None:
        self.open[alert.fingerprint] = alert
        self.by_rule.setdefault(alert.rule, set()).add(alert.fingerprint)

    def _remove(self, alert: Alert) -> None:
        self.open.pop(alert.fingerprint, None)
        self.by_rule.get(alert.rule, set()).discard(alert.fingerprint)

    def _touch(self, alert: Alert, now: float) -> None:
        alert.updated_at = now
        self.changed[alert.id] = alert

    def find(self, alert_id: uuid.UUID) -> Alert | None:
        for alert in self.open.values():
            if alert.id == alert_id:
                return alert
        return None

    def drain(self) -> tuple[list[Alert], set[uuid.UUID]]:
        """Episodes changed (to upsert) and pending ones that ended (to delete)."""
        changed, deleted = list(self.changed.values()), self.deleted
        self.changed, self.deleted = {}, set()
        return changed, deleted

    def apply(self, rule: Rule, result: RuleResult, now: float) -> None:
        """Advance the rule's alerts by one evaluation."""
        if result.health is Health.OK:
            self._end_special(rule, Health.NODATA, now)
            self._end_special(rule, Health.ERROR, now)
            self._apply_matches(rule, result, now)
            return
        # Series alerts are left as they are: with the source failing or silent their
        # condition cannot be re-checked, and resolving them would hide the problem.
        other = Health.ERROR if result.health is Health.NODATA else Health.NODATA
        self._end_special(rule, other, now)
        self._special(rule, result.health, result.error or "", now)

    def _special_labels(self, rule: Rule, health: Health) -> dict[str, str]:
        return {**rule.alert_labels({}), "alertstate": health.value}

    def _special(self, rule: Rule, health: Health, reason: str, now: float) -> None:
        labels = self._special_labels(rule, health)
        fp = fingerprint(labels)
        alert = self.open.get(fp)
        annotations = _special_annotations(rule, health, reason)
        if alert is not None:
            if alert.annotations != annotations:
                alert.annotations = annotations
                self._touch(alert, now)
            alert.last_true_at = now
            return
        state = AlertState.NODATA if health is Health.NODATA else AlertState.ERROR
        alert = Alert(
            self.new_id(),
            fp,
            rule.name,
            rule.severity.value,
            state,
            labels,
            annotations,
            None,
            now,
            now,
            now,
            fired_at=now,
        )
        self._add(alert)
        self._touch(alert, now)

    def _end_special(self, rule: Rule, health: Health, now: float) -> None:
        alert = self.open.get(fingerprint(self._special_labels(rule, health)))
        if alert is not None:
            self._resolve(alert, now, "rule")

    def _apply_matches(self, rule: Rule, result: RuleResult, now: float) -> None:
        seen: set[str] = set()
        for series_labels, value in result.matches:
            labels = rule.alert_labels(series_labels)
            fp = fingerprint(labels)
            seen.add(fp)
            alert = self.open.get(fp)
            if alert is None:
                alert = self._start(rule, fp, labels, value, now)
            alert.value = value
            alert.templates = rule.annotations
            alert.last_true_at = now
            if alert.state is AlertState.PENDING and now - alert.active_at >= rule.for_seconds:
                alert.state = AlertState.FIRING
                alert.fired_at = now
                self._touch(alert, now)
        for fp in list(self.by_rule.get(rule.name, ())):
            alert = self.open[fp]
            if fp in seen or "alertstate" in alert.labels:
                continue
            if alert.state is AlertState.PENDING:
                self._remove(alert)
                self.changed.pop(alert.id, None)
                self.deleted.add(alert.id)
            elif now - alert.last_true_at >= rule.keep_firing_for:
                self._resolve(alert, now, "rule")

    def _start(
        self, rule: Rule, fp: str, labels: dict[str, str], value: float, now: float
    ) -> Alert:
        alert = Alert(
            self.new_id(),
            fp,
            rule.name,
            rule.severity.value,
            AlertState.PENDING,
            labels,
            {},
            value,
            now,
            now,
            now,
            templates=rule.annotations,
        )
        self._add(alert)
        self._touch(alert, now)
        return alert

    def _resolve(self, alert: Alert, now: float, by: str) -> None:
        alert.state = AlertState.RESOLVED
        alert.resolved_at = now
        alert.resolved_by = by
        self._remove(alert)
        self._touch(alert, now)

    def resolve(self, alert: Alert, now: float, by: str) -> None:
        """Close an alert by hand; if its condition still holds, a new episode starts."""
        self._resolve(alert, now, f"manual:{by}")

    def acknowledge(self, alert: Alert, now: float, by: str) -> None:
        """Mute repeats of this episode; the next episode notifies again."""
        alert.acknowledged_at = now
        alert.acknowledged_by = by
        self._touch(alert, now)

    def retire(self, known_rules: set[str], now: float) -> None:
        """Resolve alerts of rules that no longer exist (a rule file changed)."""
        for alert in list(self.open.values()):
            if alert.rule not in known_rules:
                self._resolve(alert, now, "rule_removed")


def _render(
    templates: dict[str, str], rule: str, labels: dict[str, str], value: float
) -> dict[str, str]:
    return {k: templating.render(t, rule, labels, value) for k, t in templates.items()}
