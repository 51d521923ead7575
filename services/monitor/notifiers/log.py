"""A receiver that writes notifications to the structured log (the shipped default)."""

from __future__ import annotations

from services.monitor.notifiers.config import LogReceiver
from services.monitor.notifiers.payload import Notification
from shared.logs import get_logger

log = get_logger(__name__)


class LogNotifier:
    def __init__(self, spec: LogReceiver) -> None:
        self.spec = spec

    async def send(self, n: Notification) -> None:
        log.info(
            "alert notification",
            receiver=n.receiver,
            group_key=n.group_key,
            status=n.status,
            firing=[a.labels.get("alertname") for a in n.firing],
            resolved=[a.labels.get("alertname") for a in n.resolved],
            notification_id=n.id,
        )
