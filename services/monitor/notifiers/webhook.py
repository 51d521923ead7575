"""Generic webhook: the notification as JSON, signed with HMAC-SHA256 when a secret is set.

Headers: ``X-Tgflow-Timestamp`` (epoch seconds) and ``X-Tgflow-Signature``
(``sha256=`` + hex HMAC of ``timestamp.body``), so a receiver can check both origin
and freshness; ``X-Tgflow-Notification-Id`` is stable across retries.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from services.monitor.clock import iso
from services.monitor.notifiers import NotifyError
from services.monitor.notifiers.config import WebhookReceiver
from services.monitor.notifiers.payload import Notification
from shared.signing import sign


async def post_json(
    http: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str], wait: float
) -> None:
    """POST and raise NotifyError unless the answer is 2xx; 4xx (bar 408/429) is final."""
    try:
        response = await http.post(
            url,
            content=body,
            headers={"Content-Type": "application/json", **headers},
            timeout=wait,
        )
    except httpx.TimeoutException as exc:
        raise NotifyError(f"timed out after {wait:g}s ({type(exc).__name__})") from None
    except httpx.HTTPError as exc:
        raise NotifyError(f"{type(exc).__name__}: {exc}") from None
    if response.is_success:
        return
    code = response.status_code
    retryable = code >= 500 or code in (408, 429)
    raise NotifyError(f"HTTP {code}: {response.text[:200]}", retryable=retryable)


def payload(n: Notification) -> dict[str, Any]:
    return {
        "version": "1",
        "id": n.id,
        "receiver": n.receiver,
        "status": n.status,
        "group_key": n.group_key,
        "group_labels": n.group_labels,
        "common_labels": n.common_labels(),
        "common_annotations": n.common_annotations(),
        "external_url": n.external_url,
        "sent_at": iso(n.sent_at),
        "alerts": [n.alert_json(a) for a in n.alerts],
    }


class WebhookNotifier:
    def __init__(self, spec: WebhookReceiver, http: httpx.AsyncClient) -> None:
        self.spec = spec
        self.http = http
        self.secret = spec.secret_value()

    async def send(self, n: Notification) -> None:
        body = orjson.dumps(payload(n))
        timestamp = str(int(n.sent_at))
        headers = {
            **self.spec.headers,
            "X-Tgflow-Notification-Id": n.id,
            "X-Tgflow-Timestamp": timestamp,
        }
        if self.secret:
            headers["X-Tgflow-Signature"] = sign(self.secret, timestamp, body)
        await post_json(self.http, self.spec.url, body, headers, self.spec.timeout)
