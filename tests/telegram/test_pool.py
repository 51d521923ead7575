"""The client pool's upkeep (idle clients go, unhealthy ones are recycled, LRU eviction)
and the worker's reads of account rows."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY

from services.sandbox.admin_client import SandboxAdmin
from services.sandbox.client import auth_key_id
from services.sandbox.server import Sandbox
from services.worker.telegram import accounts
from services.worker.telegram.accounts import DisabledReason, State
from services.worker.telegram.runtime import TelegramRuntime
from shared.errors import Deferral, PermanentFailure, RetryableFailure
from shared.jobs.envelope import utcnow
from shared.telegram_keys import stats_key
from tests.helpers import eventually
from tests.telegram.conftest import close_runtime, import_account, open_runtime, requests_counted


async def _runtime(sandbox: Sandbox, **overrides: float) -> TelegramRuntime:
    return await open_runtime(sandbox, "pool-test", **overrides)


@pytest.fixture
async def fast_upkeep(sandbox: Sandbox) -> AsyncIterator[TelegramRuntime]:
    rt = await _runtime(sandbox, telegram_idle_seconds=2.0, telegram_health_seconds=0.2)
    yield rt
    await close_runtime(rt)


async def _connect(rt: TelegramRuntime, account_id: str) -> None:
    account = await accounts.load(rt.db, uuid.UUID(account_id))
    assert account is not None
    async with rt.pool.lease(account):
        pass


def shown_connected(account_id: str) -> bool:
    value = REGISTRY.get_sample_value("tgflow_telegram_account_connected", {"account": account_id})
    assert value in (None, 1.0)
    return value == 1.0


async def test_unhealthy_clients_are_recycled_and_idle_ones_dropped(
    api: httpx.AsyncClient, admin: SandboxAdmin, fast_upkeep: TelegramRuntime
) -> None:
    rt = fast_upkeep
    healthy, _ = await import_account(api, admin)
    sick, created = await import_account(api, admin)
    await _connect(rt, sick["id"])
    await admin.add_fault(created["user_id"], "revoke")
    await _connect(rt, healthy["id"])
    assert len(rt.pool.connected()) == 2
    assert shown_connected(healthy["id"])
    assert shown_connected(sick["id"])
    await asyncio.sleep(0.3)  # past the health interval, far from idle (2 s)
    before = {
        (a["id"], o): requests_counted(a["id"], o) for a in (healthy, sick) for o in ("ok", "error")
    }
    await rt.pool.maintain()
    assert rt.pool.connected() == [uuid.UUID(healthy["id"])]
    assert shown_connected(healthy["id"])
    assert not shown_connected(sick["id"])
    after = {key: requests_counted(*key) - n for key, n in before.items()}  # health checks count
    assert after == {
        (healthy["id"], "ok"): 1,
        (healthy["id"], "error"): 0,
        (sick["id"], "ok"): 0,
        (sick["id"], "error"): 1,
    }
    await asyncio.sleep(2.1)  # past the idle timeout
    await rt.pool.maintain()
    assert rt.pool.connected() == []
    assert not shown_connected(healthy["id"])


async def test_a_full_pool_evicts_the_least_recently_used_client(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox
) -> None:
    rt = await _runtime(sandbox, telegram_max_clients=2)
    try:
        ids = [(await import_account(api, admin))[0]["id"] for _ in range(3)]
        for account_id in ids:
            await _connect(rt, account_id)
        assert set(rt.pool.connected()) == {uuid.UUID(ids[1]), uuid.UUID(ids[2])}
    finally:
        await close_runtime(rt)


async def test_an_account_outside_the_held_shards_is_never_connected(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox
) -> None:
    rt = await _runtime(sandbox)
    try:
        imported, created = await import_account(api, admin)
        key = auth_key_id(created["session_string"])
        before = [r for r in await admin.ledger() if r["auth_key_id"] == key]
        rt.pool.may_connect = lambda _account_id: False  # its shard is another worker's
        account = await accounts.load(rt.db, uuid.UUID(imported["id"]))
        assert account is not None
        with pytest.raises(Deferral) as deferred:
            async with rt.pool.lease(account):
                pass
        assert deferred.value.code == "shard_moved"
        assert rt.pool.connected() == []
        assert [r for r in await admin.ledger() if r["auth_key_id"] == key] == before
    finally:
        await close_runtime(rt)


async def test_jobs_of_one_account_share_a_read_and_a_local_change_is_not_cached_over(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[uuid.UUID] = []
    real_load = accounts.load

    async def counted(db: object, account_id: uuid.UUID) -> accounts.Account | None:
        reads.append(account_id)
        account = await real_load(db, account_id)  # type: ignore[arg-type]
        await asyncio.sleep(0.05)  # every job below arrives while this read is in flight
        return account

    monkeypatch.setattr(accounts, "load", counted)
    rt = await _runtime(sandbox)
    try:
        imported, _ = await import_account(api, admin)
        account_id = uuid.UUID(imported["id"])
        found = await asyncio.gather(*(rt.load_usable("acme", account_id) for _ in range(20)))
        assert len(reads) == 1
        assert {a.id for a in found} == {account_id}
        with pytest.raises(PermanentFailure) as refused:
            await rt.load_usable("other-tenant", account_id)  # the cached row is still scoped
        assert refused.value.code == "account_not_found"
        assert len(reads) == 1

        rt.forget(account_id)
        started = asyncio.ensure_future(rt.load_usable("acme", account_id))
        await asyncio.sleep(0.01)  # its read is in flight ...
        await accounts.set_state(rt.db, found[0], State.DISABLED, reason=DisabledReason.REVOKED)
        rt.forget(account_id)  # ... when this worker changes the account
        assert (await started).state is State.ACTIVE  # that read began before the change
        with pytest.raises(PermanentFailure) as refused:
            await rt.load_usable("acme", account_id)
        assert refused.value.code == "account_disabled"
        assert len(reads) == 3
    finally:
        await close_runtime(rt)


async def test_a_failed_event_write_never_fails_a_connect_or_a_disconnect(
    api: httpx.AsyncClient,
    admin: SandboxAdmin,
    sandbox: Sandbox,
    monkeypatch: pytest.MonkeyPatch,
    pg: asyncpg.Connection[Any],
) -> None:
    tried: list[object] = []

    async def broken(db: object, events: object) -> None:
        tried.append(events)
        raise asyncpg.exceptions.AdminShutdownError("terminating connection")

    imported, _ = await import_account(api, admin)  # its own events are written as usual
    monkeypatch.setattr(accounts, "record_events", broken)
    rt = await _runtime(sandbox)
    try:
        await _connect(rt, imported["id"])
        assert rt.pool.connected() == [uuid.UUID(imported["id"])]
        assert await rt.pool.drop(uuid.UUID(imported["id"]), reason="requested")
        assert rt.pool.connected() == []
    finally:
        await close_runtime(rt)
    assert tried  # the writes were made, and failed, and neither step noticed
    assert await pg.fetchval("SELECT count(*) FROM account_events WHERE kind = 'connect'") == 0


async def test_a_request_past_its_timeout_is_a_retryable_failure(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox
) -> None:
    imported, created = await import_account(api, admin)
    rt = await _runtime(sandbox, telegram_request_timeout=0.5)
    try:
        await _connect(rt, imported["id"])
        await admin.add_fault(created["user_id"], "delay", method="users.getUsers", seconds=3)
        started = asyncio.get_running_loop().time()
        with pytest.raises(RetryableFailure) as failed:
            async with rt.session("acme", uuid.UUID(imported["id"])) as tg:
                await tg.call("users.getUsers", lambda: tg.client.get_me())
        assert failed.value.code == "timeout"
        assert asyncio.get_running_loop().time() - started < 2
    finally:
        await close_runtime(rt)


async def test_a_connect_telegram_refuses_leaves_no_connection_and_records_its_flood(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox, pg: asyncpg.Connection[Any]
) -> None:
    imported, created = await import_account(api, admin)
    account_id = uuid.UUID(imported["id"])
    key = auth_key_id(created["session_string"])

    async def no_live_connection() -> bool:
        return not [r for r in await admin.ledger() if r["auth_key_id"] == key and not r["closed"]]

    rt = await _runtime(sandbox, telegram_flood_sleep_threshold=0, telegram_long_flood_seconds=1)
    try:
        # Telethon's connect ends with users.getUsers (get_me): Telegram floods that.
        await admin.add_fault(
            created["user_id"], "flood_wait", method="users.getUsers", seconds=3, times=1
        )
        errors = requests_counted(account_id, "error")
        with pytest.raises(Deferral) as deferred:
            async with rt.session("acme", account_id):
                pass
        assert deferred.value.code == "flood_wait"
        ends = deferred.value.until
        # Recorded like a call's flood: shared state, the account's state, metrics, stats.
        assert await rt.limits.flood_until(account_id, "users.getUsers") == ends
        state = await pg.fetchval("SELECT state FROM accounts WHERE id = $1", account_id)
        assert state == "flood_wait"
        assert requests_counted(account_id, "error") == errors + 1
        await rt.flush_counts()
        assert await rt.redis.hget(stats_key("acme"), "users.getUsers:flood_wait") == "1"
        assert rt.pool.connected() == []
        await eventually(no_live_connection, timeout=2)
        # While it runs, a job that would have to connect waits without trying.
        tried = len(await admin.ledger())
        with pytest.raises(Deferral) as deferred:
            async with rt.session("acme", account_id):
                pass
        assert deferred.value.code == "flood_wait"
        assert len(await admin.ledger()) == tried
        await asyncio.sleep((ends - utcnow()).total_seconds() + 0.1)  # the wait is over
        async with rt.session("acme", account_id) as tg:
            await tg.call("users.getUsers", tg.client.get_me)
        assert rt.pool.connected() == [account_id]
        assert await rt.pool.drop(account_id, reason="requested")
    finally:
        await close_runtime(rt)
    kinds = await pg.fetch(
        "SELECT kind FROM account_events WHERE account_id = $1"
        " AND kind IN ('connect', 'disconnect') ORDER BY id",
        account_id,
    )
    assert [r["kind"] for r in kinds] == ["connect", "disconnect"]  # the one connection
