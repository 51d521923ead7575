"""When the client gives up on a connection: reconnecting, deferred jobs, recovery."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY
from telethon.tl.functions.help import GetNearestDcRequest

from services.sandbox.admin_client import SandboxAdmin
from services.sandbox.server import Sandbox
from services.worker.telegram import accounts, recovery
from services.worker.telegram.accounts import DisabledReason, State
from services.worker.telegram.pool import reconnect_backoff
from services.worker.telegram.recovery import Recovery
from services.worker.telegram.runtime import TelegramRuntime
from shared.errors import Deferral, RetryableFailure
from tests.helpers import auth, eventually, gateway_client, running_worker
from tests.proxy import DcProxy
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


async def test_lost_connection_defers_for_its_backoff_then_recovers(
    api: httpx.AsyncClient,
    admin: SandboxAdmin,
    runtime: TelegramRuntime,
    pg: asyncpg.Connection[Any],
) -> None:
    account, _ = await import_account(api, admin)
    account_id = uuid.UUID(account["id"])

    async def gone() -> Any:
        raise ConnectionError("Connection to Telegram failed 1 time(s)")

    async with runtime.session("acme", account_id) as tg:
        with pytest.raises(Deferral) as deferred:
            await tg.call("users.getUsers", gone)
    assert deferred.value.code == "reconnecting"
    until = deferred.value.until
    # Full jitter under a cap that doubles with each failure (0.5 s * 2^n, at most 60 s);
    # that it grows: the test below.
    assert 0.3 < (until - datetime.now(UTC)).total_seconds() <= 1.0
    assert (await _states(pg, account["id"]))[-1] == ("active", "reconnecting")
    # Until the backoff has passed, a job does not even try: it is deferred to its end.
    runtime.forget(account_id)
    with pytest.raises(Deferral) as waiting:
        async with runtime.session("acme", account_id) as tg:
            await tg.call("users.getUsers", tg.client.get_me)
    assert waiting.value.code == "reconnecting"
    assert abs((waiting.value.until - until).total_seconds()) < 0.1
    # Telegram is back: after the backoff the next call reconnects, the account is active.
    await asyncio.sleep((until - datetime.now(UTC)).total_seconds() + 0.05)
    runtime.forget(account_id)
    async with runtime.session("acme", account_id) as tg:
        me = await tg.call("users.getUsers", tg.client.get_me)
    assert me is not None
    assert (await _states(pg, account["id"]))[-1] == ("reconnecting", "active")


def test_the_backoff_grows_with_each_loss_up_to_its_cap() -> None:
    assert all(0.5 <= reconnect_backoff(1) <= 1.0 for _ in range(50))
    assert all(0.5 <= reconnect_backoff(2) <= 2.0 for _ in range(50))
    waits = [reconnect_backoff(n) for n in range(1, 13)]
    assert all(0.5 <= w <= 60.0 for w in waits)
    # Full jitter over [0.5, 60]: six draws all under 8 s would happen about once in 10^5.
    assert max(waits[6:]) > 8.0


async def test_one_dropped_connection_counts_once_however_many_calls_it_failed(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox, proxy: DcProxy
) -> None:
    """Twelve calls in flight when the connection drops: one loss, one backoff (the
    first one's, at most a second), one reconnect counted; not twelve, pushing the
    backoff to its cap after a blip."""
    imported, created = await import_account(api, admin)
    account_id = uuid.UUID(imported["id"])
    rt = await open_runtime(sandbox, "one-loss", dc=proxy.address)
    try:
        async with rt.session("acme", account_id) as tg:
            await tg.call("users.getUsers", tg.client.get_me)
        in_flight = 12
        await admin.add_fault(
            created["user_id"], "delay", method="users.getUsers", seconds=2, times=in_flight
        )

        async def job() -> Deferral:
            with pytest.raises(Deferral) as deferred:
                async with rt.session("acme", account_id) as tg:
                    await tg.call("users.getUsers", tg.client.get_me)
            return deferred.value

        reconnects = _reconnects(account_id)
        jobs = [asyncio.create_task(job()) for _ in range(in_flight)]
        await asyncio.sleep(0.5)  # every call is waiting for its answer
        await proxy.cut()
        deferrals = await asyncio.gather(*jobs)
        assert {d.code for d in deferrals} == {"reconnecting"}
        assert _reconnects(account_id) == reconnects + 1
        ends = sorted(d.until for d in deferrals)
        assert (ends[-1] - ends[0]).total_seconds() < 0.1  # the one backoff
        assert (ends[-1] - datetime.now(UTC)).total_seconds() <= 1.0  # the first loss's
        # The next connection lost (this one never made) counts again.
        await asyncio.sleep((ends[-1] - datetime.now(UTC)).total_seconds() + 0.05)
        rt.forget(account_id)
        assert (await job()).code == "reconnecting"
        assert _reconnects(account_id) == reconnects + 2
    finally:
        await close_runtime(rt)


async def test_a_connection_that_died_silently_is_replaced(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox, proxy: DcProxy
) -> None:
    """A connection that stops carrying anything, with no reset (a NAT forgot it): the
    call times out and the retry goes on a new connection, not on the dead one again.
    When the new one times out too, the account is reconnecting: its jobs wait with
    backoff instead of spending their tries one timeout at a time."""
    imported, created = await import_account(api, admin)
    account_id = uuid.UUID(imported["id"])
    rt = await open_runtime(sandbox, "half-open", dc=proxy.address, telegram_request_timeout=1.0)
    try:
        async with rt.session("acme", account_id) as tg:
            await tg.call("users.getUsers", tg.client.get_me)
        proxy.blackhole()
        with pytest.raises(RetryableFailure) as failed:
            async with rt.session("acme", account_id) as tg:
                await tg.call("users.getUsers", tg.client.get_me)
        assert failed.value.code == "timeout"
        assert rt.pool.connected() == []  # the dead connection is not kept
        assert proxy.accepted == 1
        async with rt.session("acme", account_id) as tg:  # the retry
            assert await tg.call("users.getUsers", tg.client.get_me) is not None
        assert proxy.accepted == 2
        # Now calls time out on new connections too (connects still go through).
        await admin.add_fault(created["user_id"], "delay", method="help.getNearestDc", seconds=5)
        for _ in range(2):
            with pytest.raises((RetryableFailure, Deferral)) as outcome:
                async with rt.session("acme", account_id) as tg:
                    await tg.call("help.getNearestDc", lambda: tg.client(GetNearestDcRequest()))
            rt.forget(account_id)
        assert isinstance(outcome.value, Deferral)  # the second timeout in a row
        assert outcome.value.code == "reconnecting"
        assert proxy.accepted == 3
        row = await rt.db.fetchrow(
            "SELECT state, last_error FROM accounts WHERE id = $1", account_id
        )
        assert (row["state"], row["last_error"]) == ("reconnecting", "timeout")
    finally:
        await close_runtime(rt)


async def test_jobs_leasing_a_recycled_client_connect_anew_under_steady_traffic(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox, proxy: DcProxy
) -> None:
    """A connection dies silently while jobs keep coming, so its client is never
    unused: the jobs that come after the first timeout are not given the dead
    connection (each would time out and spend a try) but a new one; and a call still
    on the old one timing out is a second timeout in a row: reconnecting, no try spent."""
    imported, _ = await import_account(api, admin)
    account_id = uuid.UUID(imported["id"])
    rt = await open_runtime(sandbox, "steady", dc=proxy.address, telegram_request_timeout=1.0)
    outcomes: list[str] = []

    async def job() -> None:
        try:
            async with rt.session("acme", account_id) as tg:
                await tg.call("users.getUsers", tg.client.get_me)
            outcomes.append("ok")
        except (RetryableFailure, Deferral) as exc:
            outcomes.append(exc.code if isinstance(exc, Deferral) else "try spent")
        rt.forget(account_id)

    try:
        await job()
        proxy.blackhole()  # the connection made carries nothing from now on
        jobs = []
        for _ in range(12):  # a job every 0.4 s, each holding the client up to 1 s
            jobs.append(asyncio.create_task(job()))
            await asyncio.sleep(0.4)
        await asyncio.gather(*jobs)
        assert outcomes.count("try spent") == 1  # the first timeout only
        assert "reconnecting" in outcomes  # calls that were on it with the first: no try spent
        assert proxy.accepted > 1
        assert outcomes[-1] == "ok"  # new connections go through the proxy
    finally:
        await close_runtime(rt)


def _reconnects(account_id: uuid.UUID) -> float:
    labels = {"account": str(account_id)}
    return REGISTRY.get_sample_value("tgflow_telegram_reconnects_total", labels) or 0.0


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
    recovery = Recovery(runtime)
    assert await recovery.once() == 1  # the flood's end; the lost one is in its backoff
    await asyncio.sleep(1.1)  # a first failure's backoff is at most 1 s
    assert await recovery.once() == 1
    states = dict(await pg.fetch("SELECT id, state FROM accounts"))
    assert states == {lost_id: "active", flooded_id: "active", elsewhere_id: "reconnecting"}
    assert (await _states(pg, lost["id"]))[-1] == ("reconnecting", "active")
    assert runtime.pool.connected() == [lost_id]  # a flood's end needs no connection


async def test_jobs_wait_out_an_unanswering_dc_deferred_not_failed(
    sandbox: Sandbox, admin: SandboxAdmin
) -> None:
    """A DC that takes the connection but never answers: the connect times out, and every
    job queued for the account is deferred as reconnecting, no try spent, instead of each
    one connecting again at once, timing out and failing."""
    dc = f"127.0.0.1:{sandbox.mtproto_port}"
    async with gateway_client() as api, running_worker(worker_poll_delay=0.05, sandbox_dc=dc):
        account, _ = await import_account(api, admin)
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()

    silent = await asyncio.start_server(hold, "127.0.0.1", 0)
    silent_dc = f"127.0.0.1:{silent.sockets[0].getsockname()[1]}"
    try:
        async with (
            gateway_client() as api,
            running_worker(
                worker_poll_delay=0.05, sandbox_dc=silent_dc, telegram_request_timeout=1.0
            ),
        ):
            ids = []
            for _ in range(5):
                response = await api.post(
                    "/v1/jobs",
                    json={
                        "type": "telegram.get_me",
                        "timeout_seconds": 2.5,
                        "params": {"account_id": account["id"]},
                    },
                    headers=auth(),
                )
                ids.append(response.json()["id"])

            async def jobs_now() -> list[dict[str, Any]]:
                return [(await api.get(f"/v1/jobs/{i}", headers=auth())).json() for i in ids]

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 8
            while loop.time() < deadline:
                jobs = await jobs_now()
                assert {j["status"] for j in jobs} <= {"queued", "running"}, jobs
                await asyncio.sleep(0.2)

            async def all_waiting() -> list[dict[str, Any]] | None:
                jobs = await jobs_now()
                return jobs if all(j["status"] == "queued" for j in jobs) else None

            jobs = await eventually(all_waiting, timeout=10, interval=0.05)
            state = (await api.get(f"/v1/accounts/{account['id']}", headers=auth())).json()
    finally:
        for writer in held:
            writer.close()
        silent.close()
        await silent.wait_closed()
    assert [j["status"] for j in jobs] == ["queued"] * 5
    assert {j["error"]["code"] for j in jobs} == {"reconnecting"}
    assert all(h["code"] == "reconnecting" for j in jobs for h in j["history"]), jobs
    assert state["state"] == "reconnecting"
    # The backoff holds every job of the account: a handful of connects, not one per job
    # per try (five jobs failing five tries each made 25).
    assert 1 <= len(held) <= 8


async def test_a_crowd_of_long_flood_waits_does_not_starve_a_reconnecting_account(
    api: httpx.AsyncClient,
    admin: SandboxAdmin,
    runtime: TelegramRuntime,
    pg: asyncpg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Recovery reads only accounts that are due, and pages on: rows that cannot come back
    (long floods, other workers' reconnecting accounts) never hold its window for good."""
    monkeypatch.setattr(recovery, "BATCH", 5)
    account, _ = await import_account(api, admin)
    account_id = uuid.UUID(account["id"])
    await pg.executemany(
        "INSERT INTO accounts (id, tenant_id, tg_user_id, state, flood_until, updated_at)"
        " VALUES ($1, 'acme', $2, $3, now() + interval '1 day', now() - interval '1 hour')",
        [(uuid.uuid4(), 10_000_000 + i, "flood_wait") for i in range(20)]
        + [(uuid.UUID(int=i + 1), 20_000_000 + i, "reconnecting") for i in range(12)],
    )
    theirs = {uuid.UUID(int=i + 1) for i in range(12)}  # first by id: another worker's
    await pg.execute(
        "UPDATE accounts SET state = 'reconnecting', updated_at = now() WHERE id = $1",
        account_id,
    )
    runtime.pool.may_connect = lambda a: a not in theirs
    rounds = Recovery(runtime)
    back = [await rounds.once() for _ in range(3)]
    assert back == [0, 0, 1]  # pages of 5: 12 of theirs first, then this one
    assert await pg.fetchval("SELECT state FROM accounts WHERE id = $1", account_id) == "active"


async def test_back_from_reconnecting_into_a_flood_wait_still_running(
    api: httpx.AsyncClient,
    admin: SandboxAdmin,
    runtime: TelegramRuntime,
    pg: asyncpg.Connection[Any],
) -> None:
    account, _ = await import_account(api, admin)
    account_id = uuid.UUID(account["id"])
    await pg.execute(
        "UPDATE accounts SET state = 'reconnecting', flood_until = now() + interval '1 hour'"
        " WHERE id = $1",
        account_id,
    )
    async with runtime.session("acme", account_id) as tg:
        await tg.call("users.getUsers", tg.client.get_me)
    row = await pg.fetchrow("SELECT state, flood_until FROM accounts WHERE id = $1", account_id)
    assert row["state"] == "flood_wait"  # not active: sends would still be held
    assert (await _states(pg, account["id"]))[-1] == ("reconnecting", "flood_wait")


async def test_a_call_through_a_stale_copy_never_brings_a_disabled_account_back(
    api: httpx.AsyncClient,
    admin: SandboxAdmin,
    runtime: TelegramRuntime,
    pg: asyncpg.Connection[Any],
) -> None:
    """A job read the account while it was reconnecting, and another job disabled it
    (revoked) before this one's call came back: the call's success is the job's, but the
    account stays disabled."""
    account, _ = await import_account(api, admin)
    account_id = uuid.UUID(account["id"])
    await pg.execute(
        "UPDATE accounts SET state = 'reconnecting', flood_until = now() - interval '1 second'"
        " WHERE id = $1",
        account_id,
    )
    async with runtime.session("acme", account_id) as tg:
        assert tg.account.state is State.RECONNECTING  # the copy this job holds
        fresh = await accounts.load(runtime.db, account_id)
        assert fresh is not None
        await accounts.disable(
            runtime.db, fresh, DisabledReason.REVOKED, code="auth_key_unregistered", method="x"
        )
        me = await tg.call("users.getUsers", tg.client.get_me)
    assert me.id == account["tg_user_id"]  # the job itself succeeded
    row = await pg.fetchrow("SELECT state, disabled_reason FROM accounts WHERE id = $1", account_id)
    assert (row["state"], row["disabled_reason"]) == ("disabled", "revoked")
    assert await accounts.set_state(runtime.db, tg.account, State.ACTIVE) is False
    assert await accounts.set_state(runtime.db, tg.account, State.FLOOD_WAIT) is False
    assert (await _states(pg, account["id"]))[-1] == ("reconnecting", "disabled")
