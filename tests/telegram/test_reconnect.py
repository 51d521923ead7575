"""When the client gives up on a connection: reconnecting, deferred jobs, recovery."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from services.sandbox.admin_client import SandboxAdmin
from services.sandbox.server import Sandbox
from services.worker.telegram.runtime import TelegramRuntime
from services.worker.telegram.vault import vault_from_settings
from shared.config import WorkerSettings
from shared.db import create_pool
from shared.errors import Deferral
from shared.redis_client import create_redis
from tests.telegram.conftest import import_account


@pytest.fixture
async def runtime(sandbox: Sandbox) -> AsyncIterator[TelegramRuntime]:
    settings = WorkerSettings(sandbox_dc=f"127.0.0.1:{sandbox.mtproto_port}")
    pool, redis = await create_pool(settings, role="test"), create_redis(settings)
    vault = vault_from_settings(None, settings.secret_key.get_secret_value())
    rt = TelegramRuntime(settings, pool, redis, vault, "test-worker")
    yield rt
    await rt.close()
    await pool.close()
    await redis.aclose()


async def _states(pg: asyncpg.Connection[Any], account_id: str) -> list[tuple[str, str]]:
    rows = await pg.fetch(
        "SELECT details FROM account_events WHERE account_id = $1 AND kind = 'state_change'"
        " ORDER BY id",
        uuid.UUID(account_id),
    )
    details = [json.loads(r["details"]) for r in rows]  # a raw connection: jsonb as text
    return [(d["from"], d["to"]) for d in details]


async def test_lost_connection_defers_with_growing_backoff_then_recovers(
    api: httpx.AsyncClient,
    admin: SandboxAdmin,
    runtime: TelegramRuntime,
    pg: asyncpg.Connection[Any],
) -> None:
    account, _ = await import_account(api, admin)
    account_id = uuid.UUID(account["id"])

    async def gone() -> Any:
        raise ConnectionError("Connection to Telegram failed 1 time(s)")

    for failures in range(1, 5):
        runtime.forget(account_id)
        async with runtime.session("acme", account_id) as tg:
            with pytest.raises(Deferral) as deferred:
                await tg.call("users.getUsers", gone)
        assert deferred.value.code == "reconnecting"
        wait = (deferred.value.until - datetime.now(UTC)).total_seconds()
        # Full jitter under a cap that doubles with each failure (0.5 s * 2^n, at most 60 s).
        assert 0.3 < wait <= 0.5 * 2**failures
    assert (await _states(pg, account["id"]))[-1] == ("active", "reconnecting")
    # Telegram is back: the next call reconnects and the account is active again.
    runtime.forget(account_id)
    async with runtime.session("acme", account_id) as tg:
        me = await tg.call("users.getUsers", tg.client.get_me)
    assert me is not None
    assert (await _states(pg, account["id"]))[-1] == ("reconnecting", "active")
