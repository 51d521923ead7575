"""A Telegram notification end to end: monitor -> telegram.send_message job -> worker ->
the sandbox DC, through the real Telethon client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from services.monitor.clock import ManualClock
from services.monitor.engine import Engine
from services.sandbox.admin_client import SandboxAdmin
from tests.helpers import eventually
from tests.monitor.conftest import StaticCollector
from tests.telegram.conftest import admin, api, import_account, sandbox  # noqa: F401

RULES = """
rules:
  - name: QueueStuck
    expr: depth > 100
    severity: critical
    annotations: {summary: "{{ $labels.queue }} holds {{ $value }} jobs"}
"""


async def test_an_alert_arrives_in_the_chat_once(
    api: httpx.AsyncClient,  # noqa: F811
    admin: SandboxAdmin,  # noqa: F811
    engine_factory: Callable[..., Engine],
    clock: ManualClock,
) -> None:
    account, created = await import_account(api, admin, username="ops_bot_sb")
    config = {
        "receivers": [
            {"name": "tg", "kind": "telegram", "account": account["id"], "chat": "me",
             "tenant": "acme"}
        ],
        "route": {"receiver": "tg", "group_wait": "0s", "cooldown": "1m"},
    }  # fmt: skip
    src = StaticCollector("src", {"depth"})
    engine = engine_factory(RULES, config, [src])
    await engine.start()
    src.set("depth", 250, queue="ai")
    await engine.cycle()
    await engine.dispatcher.idle()

    async def delivered() -> list[dict[str, Any]]:
        return await admin.messages(created["user_id"])

    (message,) = await eventually(delivered, timeout=15)
    assert message["text"].startswith("[FIRING] QueueStuck (1 firing)")
    assert "- FIRING [critical] ai holds 250 jobs" in message["text"]
    # Later cycles within the cooldown, and a restarted monitor, send nothing more.
    clock.advance(15)
    await engine.cycle()
    restarted = engine_factory(RULES, config, [src])
    await restarted.start()
    clock.advance(15)
    await restarted.cycle()
    await restarted.dispatcher.idle()
    assert len(await admin.messages(created["user_id"])) == 1
