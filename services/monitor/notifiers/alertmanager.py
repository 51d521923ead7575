"""The Alertmanager webhook payload (version 4), for tools that already consume it."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from services.monitor.notifiers.config import AlertmanagerReceiver
from services.monitor.notifiers.payload import Notification
from services.monitor.notifiers.webhook import post_json


def payload(n: Notification) -> dict[str, Any]:
    alerts = []
    for alert in n.alerts:
        item = n.alert_json(alert)
        alerts.append(
            {
                "status": item["status"],
                "labels": item["labels"],
                "annotations": item["annotations"],
                "startsAt": item["startsAt"],
                "endsAt": item["endsAt"],
                "generatorURL": n.external_url,
                "fingerprint": item["fingerprint"],
            }
        )
    return {
        "version": "4",
        "groupKey": n.group_key,
        "truncatedAlerts": 0,
        "status": n.status,
        "receiver": n.receiver,
        "groupLabels": n.group_labels,
        "commonLabels": n.common_labels(),
        "commonAnnotations": n.common_annotations(),
        "externalURL": n.external_url,
        "alerts": alerts,
    }


class AlertmanagerNotifier:
    def __init__(self, spec: AlertmanagerReceiver, http: httpx.AsyncClient) -> None:
        self.spec = spec
        self.http = http

    async def send(self, n: Notification) -> None:
        body = orjson.dumps(payload(n))
        await post_json(self.http, self.spec.url, body, {}, self.spec.timeout)
