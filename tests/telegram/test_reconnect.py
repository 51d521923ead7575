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
from services.worker.telegram.recovery import Recovery
from services.worker.telegram.runtime import TelegramRuntime
from shared.errors import Deferral
from tests.telegram.conftest import close_runtime, import_account, open_runtime


@pytest.fixture
async def runtime(sandbox: Sandbox) -> AsyncIterator[TelegramRuntime]:
    rt = await open_runtime(sandbox, "test-worker")
    yield rt
    await close_runtime(rt)


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
        assert 0.3 < wait <= 0.5 * 2**failures  # (that it grows: the test below)
    assert (await _states(pg, account["id"]))[-1] == ("active", "reconnecting")
    # Telegram is back: the next call reconnects and the account is active again.
    runtime.forget(account_id)
    async with runtime.session("acme", account_id) as tg:
        me = await tg.call("users.getUsers", tg.client.get_me)
    assert me is not None
    assert (await _states(pg, account["id"]))[-1] == ("reconnecting", "active")


def test_the_backoff_grows_with_each_failure_up_to_its_cap(runtime: TelegramRuntime) -> None:
    account_id = uuid.uuid4()
    waits = [runtime.pool.connection_lost(account_id) for _ in range(12)]
    assert 0.5 <= waits[0] <= 1.0
    assert all(0.5 <= w <= 60.0 for w in waits)
    # Full jitter over [0.5, 60]: six draws all under 8 s would happen about once in 10^5.
    assert max(waits[6:]) > 8.0
    runtime.pool.connection_ok(account_id)
    assert runtime.pool.connection_lost(account_id) <= 1.0  # a success starts it over


async def test_idle_accounts_come_back_without_a_job(
    api: httpx.AsyncClient,
    admin: SandboxAdmin,
    runtime: TelegramRuntime,
    pg: asyncpg.Connection[Any],
) -> None:
    lost, _ = await import_account(api, admin)
    flooded, _ = await import_account(api, admin)
    elsewhere, _ = await import_account(api, admin)
    lost_id, flooded_id, elsewhere_id = (uuid.UUID(a["id"]) for a in (lost, flooded, elsewhere))

    async def gone() -> Any:
        raise ConnectionError("Connection to Telegram failed 1 time(s)")

    for account_id in (lost_id, elsewhere_id):
        async with runtime.session("acme", account_id) as tg:
            with pytest.raises(Deferral):
                await tg.call("users.getUsers", gone)
    await pg.execute(
        "UPDATE accounts SET state = 'flood_wait', flood_until = now() - interval '1 second'"
        " WHERE id = $1",
        flooded_id,
    )
    runtime.pool.may_connect = lambda account_id: account_id != elsewhere_id  # not our shard
    assert await Recovery(runtime).once() == 2
    states = dict(await pg.fetch("SELECT id, state FROM accounts"))
    assert states == {lost_id: "active", flooded_id: "active", elsewhere_id: "reconnecting"}
    assert (await _states(pg, lost["id"]))[-1] == ("reconnecting", "active")
    assert runtime.pool.connected() == [lost_id]  # a flood's end needs no connection
