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
from services.worker.telegram import accounts, pool
from services.worker.telegram.accounts import DisabledReason, State
from services.worker.telegram.runtime import TelegramRuntime
from shared.errors import Deferral, PermanentFailure, RetryableFailure
from shared.jobs.envelope import utcnow
from shared.telegram_keys import PRESENCE_TTL, presence_key, stats_key
from tests.helpers import eventually
from tests.proxy import DcProxy
from tests.telegram.conftest import close_runtime, import_account, open_runtime, requests_counted

METHOD = "users.getUsers"  # what a health check calls


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


async def _upkeep(rt: TelegramRuntime) -> None:
    """One upkeep pass, and the health checks it started."""
    await asyncio.gather(*await rt.pool.maintain())


def shown_connected(account_id: str) -> bool:
    value = REGISTRY.get_sample_value("tgflow_telegram_account_connected", {"account": account_id})
    assert value in (None, 1.0)
    return value == 1.0


async def test_unhealthy_clients_are_recycled_and_idle_ones_dropped(
    api: httpx.AsyncClient,
    admin: SandboxAdmin,
    fast_upkeep: TelegramRuntime,
    pg: asyncpg.Connection[Any],
) -> None:
    rt = fast_upkeep
    healthy, _ = await import_account(api, admin)
    sick, created = await import_account(api, admin)
    sick_id = uuid.UUID(sick["id"])
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
    unhealthy = _sample("tgflow_telegram_disconnects_total", reason="unhealthy")
    await _upkeep(rt)
    assert rt.pool.connected() == [uuid.UUID(healthy["id"])]
    assert _sample("tgflow_telegram_disconnects_total", reason="unhealthy") == unhealthy + 1
    # What the check met is what a job's call would have met: the session is dead.
    row = await pg.fetchrow("SELECT state, disabled_reason FROM accounts WHERE id = $1", sick_id)
    assert (row["state"], row["disabled_reason"]) == ("disabled", "revoked")
    kinds = await pg.fetch("SELECT kind FROM account_events WHERE account_id = $1", sick_id)
    assert "error" in {r["kind"] for r in kinds}
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
    await _upkeep(rt)
    assert rt.pool.connected() == []
    assert not shown_connected(healthy["id"])


async def test_a_health_check_keeps_to_a_flood_wait_recorded_for_its_call(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox, fast_upkeep: TelegramRuntime
) -> None:
    """Another worker was told to wait before users.getUsers on this account: the
    health check does not call it, and the healthy connection is kept."""
    rt = fast_upkeep
    imported, created = await import_account(api, admin)
    account_id = uuid.UUID(imported["id"])
    await _connect(rt, imported["id"])
    await rt.limits.record_flood(account_id, METHOD, 3600)
    fault = await admin.add_fault(created["user_id"], "flood_wait", method=METHOD, seconds=3600)
    await asyncio.sleep(0.3)  # past the health interval
    await _upkeep(rt)
    assert [f.fired for f in sandbox.core.faults.all() if f.id == fault] == [0]  # not sent
    assert rt.pool.connected() == [account_id]


async def test_a_flood_met_by_a_health_check_is_recorded_and_keeps_the_client(
    api: httpx.AsyncClient,
    admin: SandboxAdmin,
    fast_upkeep: TelegramRuntime,
    pg: asyncpg.Connection[Any],
) -> None:
    rt = fast_upkeep
    imported, created = await import_account(api, admin)
    account_id = uuid.UUID(imported["id"])
    await _connect(rt, imported["id"])
    await admin.add_fault(created["user_id"], "flood_wait", method=METHOD, seconds=600, times=1)
    floods = _sample("tgflow_telegram_flood_waits_total", account=str(account_id), method=METHOD)
    await asyncio.sleep(0.3)  # past the health interval
    await _upkeep(rt)
    until = await rt.limits.flood_until(account_id, METHOD)  # shared with every worker
    assert until is not None
    assert (until - utcnow()).total_seconds() > 590
    row = await pg.fetchrow("SELECT state, flood_until FROM accounts WHERE id = $1", account_id)
    assert (row["state"], row["flood_until"]) == ("flood_wait", until)  # a long wait
    events = await pg.fetch("SELECT kind FROM account_events WHERE account_id = $1", account_id)
    assert "flood_wait" in {r["kind"] for r in events}
    labels = {"account": str(account_id), "method": METHOD}
    assert _sample("tgflow_telegram_flood_waits_total", **labels) == floods + 1
    assert rt.pool.connected() == [account_id]  # Telegram answered: the connection is fine


async def test_a_connection_lost_while_idle_is_dropped_and_counted(
    api: httpx.AsyncClient,
    admin: SandboxAdmin,
    sandbox: Sandbox,
    proxy: DcProxy,
    pg: asyncpg.Connection[Any],
) -> None:
    """Telethon gives up on an idle client's connection (no job is there to notice):
    upkeep drops the client as lost, with its disconnect event, and the connected
    clients gauge follows."""
    imported, _ = await import_account(api, admin)
    account_id = uuid.UUID(imported["id"])
    rt = await open_runtime(sandbox, "lost-idle", dc=proxy.address)
    try:
        await _connect(rt, imported["id"])
        assert _sample("tgflow_telegram_clients_connected") == 1
        lost = _sample("tgflow_telegram_disconnects_total", reason="lost")
        await proxy.cut()

        async def given_up() -> bool:
            return not rt.pool.is_connected(account_id)

        await eventually(given_up, timeout=5)
        assert rt.pool.holds(account_id)
        await _upkeep(rt)
        assert not rt.pool.holds(account_id)
        assert _sample("tgflow_telegram_clients_connected") == len(rt.pool.connected()) == 0
        assert _sample("tgflow_telegram_disconnects_total", reason="lost") == lost + 1
        assert not shown_connected(imported["id"])
    finally:
        await close_runtime(rt)
    rows = await pg.fetch(
        "SELECT kind, details->>'reason' AS reason FROM account_events WHERE account_id = $1"
        " AND kind IN ('connect', 'disconnect') ORDER BY id",
        account_id,
    )
    assert [(r["kind"], r["reason"]) for r in rows] == [("connect", None), ("disconnect", "lost")]


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_client_that_never_connected_is_dropped_without_a_disconnect(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox
) -> None:
    """A job deferred before any call needed Telegram leases a client that never
    connects: dropping it (idle, or with its shard) closes no connection, so no
    disconnect is counted and the account's presence (another worker's, say) stays."""
    imported, _ = await import_account(api, admin)
    other, _ = await import_account(api, admin)
    rt = await _runtime(sandbox, telegram_idle_seconds=1.0)
    try:
        for account in (imported, other):
            account_id = uuid.UUID(account["id"])
            await rt.limits.record_flood(account_id, "messages.getHistory", 60)
            with pytest.raises(Deferral):
                async with rt.session("acme", account_id) as tg:
                    await tg.call("messages.getHistory", lambda: tg.client.get_messages("me"))
            assert rt.pool.holds(account_id)
            assert not rt.pool.is_connected(account_id)
            await rt.redis.hset(presence_key(account_id), "worker", "another")
        idle = _sample("tgflow_telegram_disconnects_total", reason="idle")
        moved = _sample("tgflow_telegram_disconnects_total", reason="handoff")
        assert await rt.pool.drop_matching(lambda a: a == uuid.UUID(other["id"]), reason="handoff")
        await asyncio.sleep(1.1)  # past the idle timeout
        await _upkeep(rt)
        assert not rt.pool.holds(uuid.UUID(imported["id"]))
        assert _sample("tgflow_telegram_disconnects_total", reason="idle") == idle
        assert _sample("tgflow_telegram_disconnects_total", reason="handoff") == moved
        for account in (imported, other):
            assert await rt.redis.hget(presence_key(account["id"]), "worker") == "another"
    finally:
        await close_runtime(rt)


async def test_health_checks_that_hang_hold_up_neither_upkeep_nor_presence(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Health checks run beside upkeep, a few at a time: clients whose DC stops
    answering (each check waits out the request timeout) delay neither the next pass
    nor the presence of the others, which would lapse (90 s) behind checks in a row."""
    monkeypatch.setattr(pool, "HEALTH_CHECKS_AT_ONCE", 2)
    rt = await _runtime(sandbox, telegram_health_seconds=0.2, telegram_request_timeout=1.5)
    try:
        hung = [await import_account(api, admin) for _ in range(3)]
        healthy, _ = await import_account(api, admin)
        for imported, _ in [*hung, (healthy, None)]:
            await _connect(rt, imported["id"])
        for _, created in hung:  # their DC stops answering
            await admin.add_fault(created["user_id"], "delay", method=METHOD, seconds=30)
        await rt.redis.delete(presence_key(healthy["id"]))
        await asyncio.sleep(0.3)  # every client is due a check
        started = asyncio.get_running_loop().time()
        checks = await rt.pool.maintain()
        assert asyncio.get_running_loop().time() - started < 1.0
        assert len(checks) == 2  # the first two due; the others wait for a later pass
        assert await rt.redis.ttl(presence_key(healthy["id"])) > PRESENCE_TTL - 5
        assert await rt.pool.maintain() == []  # two under way already: no more, none twice
        await asyncio.gather(*checks)  # timed out: those clients are recycled
        await asyncio.sleep(0.3)
        await asyncio.gather(*await rt.pool.maintain())
        assert rt.pool.connected() == [uuid.UUID(healthy["id"])]
    finally:
        await close_runtime(rt)


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

    async def read_chats() -> None:  # a call that needs the connection
        async with rt.session("acme", account_id) as tg:
            await tg.call("messages.getDialogs", lambda: tg.client.get_dialogs(limit=1))

    try:
        # Telethon's connect ends with users.getUsers (get_me): Telegram floods that.
        await admin.add_fault(
            created["user_id"], "flood_wait", method="users.getUsers", seconds=3, times=1
        )
        errors = requests_counted(account_id, "error")
        with pytest.raises(Deferral) as deferred:
            await read_chats()
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
            await read_chats()
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


async def test_a_replaced_client_still_closing_shows_as_the_accounts_connection(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox
) -> None:
    """A client taken out of the pool while a job still uses it (a disconnect asked for)
    keeps its connection until that job ends: it is counted, shown and announced as the
    account's connection meanwhile, though the account's next client (made, not yet
    connected) is not; once the job ends, it is gone from all three."""
    imported, _ = await import_account(api, admin)
    account_id = uuid.UUID(imported["id"])
    rt = await _runtime(sandbox)
    try:
        account = await accounts.load(rt.db, account_id)
        assert account is not None
        async with rt.pool.lease(account):
            rt.pool.replace(account_id, reason="requested")
            with pytest.raises(Deferral) as waited:
                async with rt.pool.lease(account):
                    pass
            assert waited.value.code == "client_closing"
            await rt.redis.delete(presence_key(account_id))  # as if its TTL had run out
            await _upkeep(rt)
            assert shown_connected(imported["id"])
            assert _sample("tgflow_telegram_clients_connected") == 1
            assert rt.pool.connected() == [account_id]
            assert await rt.redis.exists(presence_key(account_id))
        assert not shown_connected(imported["id"])
        assert _sample("tgflow_telegram_clients_connected") == 0
        assert not await rt.redis.exists(presence_key(account_id))
    finally:
        await close_runtime(rt)
