"""Sentry events from a failing gateway request carry no session string or password."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sentry_sdk
from redis.exceptions import ResponseError
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from services.gateway.app import create_app
from services.gateway.state import GatewayState
from shared.config import GatewaySettings
from shared.telemetry import setup_sentry
from tests.helpers import auth


class Capture(Transport):
    """Keeps every envelope in memory: nothing leaves the process."""

    sent: list[dict[str, Any]] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        for item in envelope.items:
            payload = item.get_event() or item.get_transaction_event()
            if payload is not None:
                self.sent.append(payload)
            elif item.payload.json is not None:
                self.sent.append(item.payload.json)


@pytest.fixture
def captured() -> Iterator[list[dict[str, Any]]]:
    Capture.sent = []
    yield Capture.sent
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)


async def test_secrets_never_reach_a_sentry_event(
    captured: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    session = (
        "1"
        + base64.urlsafe_b64encode(
            struct.pack(">B4sH256s", 2, socket.inet_aton("127.0.0.1"), 443, os.urandom(256))
        ).decode()
    )
    password = "hunter2-very-secret-2fa"
    settings = GatewaySettings(sentry_dsn="http://public@127.0.0.1:9/1")
    setup_sentry(settings, "gateway", transport=Capture)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        state: GatewayState = app.state.tgflow

        async def refuse(name: Any, *args: Any, **kwargs: Any) -> Any:
            raise ResponseError("OOM command not allowed when used memory > 'maxmemory'.")

        monkeypatch.setattr(state.redis, "set", refuse)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            imported = await client.post(
                "/v1/accounts/import", json={"session_string": session}, headers=auth()
            )
            login = await client.post(
                "/v1/accounts/0190f000-0000-7000-8000-000000000000/login/password",
                json={"password": password},
                headers=auth(),
            )
    assert imported.status_code == login.status_code == 500
    sentry_sdk.flush()
    assert len(captured) >= 2  # both failures were reported
    sent = json.dumps(captured, default=str)
    assert "ResponseError" in sent
    assert session[:40] not in sent
    assert password not in sent
