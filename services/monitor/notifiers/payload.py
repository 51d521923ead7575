"""One notification: a group's alerts at a moment, with renderings for each notifier."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.monitor.clock import iso
from services.monitor.lifecycle import Alert, AlertState

_ZERO_TIME = "0001-01-01T00:00:00Z"  # "not ended", as Alertmanager payloads say it


@dataclass
class Notification:
    id: str  # the same on every retry of this notification, for receivers to dedupe
    receiver: str
    group_key: str
    group_labels: dict[str, str]
    firing: list[Alert]
    resolved: list[Alert]
    sent_at: float
    external_url: str = ""

    @property
    def alerts(self) -> list[Alert]:
        return self.firing + self.resolved

    @property
    def status(self) -> str:
        return "firing" if self.firing else "resolved"

    def common_labels(self) -> dict[str, str]:
        return _common([a.labels for a in self.alerts])

    def common_annotations(self) -> dict[str, str]:
        return _common([a.annotations for a in self.alerts])

    def alert_json(self, alert: Alert) -> dict[str, Any]:
        return {
            "id": str(alert.id),
            "status": "resolved" if alert.state is AlertState.RESOLVED else "firing",
            "state": alert.state.value,
            "labels": alert.labels,
            "annotations": alert.annotations,
            "value": alert.value,
            "startsAt": iso(alert.fired_at or alert.active_at),
            "endsAt": iso(alert.resolved_at) or _ZERO_TIME,
            "fingerprint": alert.fingerprint,
            "acknowledged": alert.acknowledged_at is not None,
        }

    def title(self) -> str:
        name = self.group_labels.get("alertname") or self.common_labels().get("alertname", "")
        count = f"{len(self.firing)} firing" if self.firing else f"{len(self.resolved)} resolved"
        return f"[{self.status.upper()}] {name or self.group_key} ({count})".strip()

    def text(self) -> str:
        """Plain text for chat and mail: one line per alert, then its description."""
        lines = [self.title()]
        for alert in self.alerts:
            mark = "RESOLVED" if alert.state is AlertState.RESOLVED else alert.state.value.upper()
            summary = alert.annotations.get("summary") or alert.rule
            lines.append(f"- {mark} [{alert.severity}] {summary}")
            if alert.annotations.get("description"):
                lines.append(f"  {alert.annotations['description']}")
            if alert.annotations.get("runbook_url"):
                lines.append(f"  runbook: {alert.annotations['runbook_url']}")
        return "\n".join(lines)


def _common(maps: list[dict[str, str]]) -> dict[str, str]:
    if not maps:
        return {}
    first = maps[0]
    return {k: v for k, v in first.items() if all(m.get(k) == v for m in maps[1:])}
