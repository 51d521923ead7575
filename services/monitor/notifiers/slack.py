"""Slack-compatible incoming webhook: a text line plus one coloured attachment per alert."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from services.monitor.lifecycle import AlertState
from services.monitor.notifiers.config import SlackReceiver
from services.monitor.notifiers.payload import Notification
from services.monitor.notifiers.webhook import post_json

_COLOURS = {"info": "#439FE0", "warning": "warning", "critical": "danger", "emergency": "danger"}


def payload(n: Notification, channel: str | None) -> dict[str, Any]:
    attachments = []
    for alert in n.alerts:
        resolved = alert.state is AlertState.RESOLVED
        attachments.append(
            {
                "color": "good" if resolved else _COLOURS.get(alert.severity, "warning"),
                "title": alert.annotations.get("summary") or alert.rule,
                "text": alert.annotations.get("description", ""),
                "footer": f"{alert.rule} · {alert.severity} · {alert.state.value}",
                **(
                    {"title_link": alert.annotations["runbook_url"]}
                    if "runbook_url" in alert.annotations
                    else {}
                ),
            }
        )
    body: dict[str, Any] = {"text": n.title(), "attachments": attachments}
    if channel:
        body["channel"] = channel
    return body


class SlackNotifier:
    def __init__(self, spec: SlackReceiver, http: httpx.AsyncClient) -> None:
        self.spec = spec
        self.http = http

    async def send(self, n: Notification) -> None:
        body = orjson.dumps(payload(n, self.spec.channel))
        await post_json(self.http, self.spec.url, body, {}, self.spec.timeout)
