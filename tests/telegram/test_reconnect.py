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

from services.sandbox.admin_client import SandboxAdmin
from services.sandbox.server import Sandbox
from services.worker.telegram import recovery
from services.worker.telegram.recovery import Recovery
from services.worker.telegram.runtime import TelegramRuntime
from shared.errors import Deferral
from tests.helpers import auth, eventually, gateway_client, running_worker
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
        async with runtime.session("acme", account_id):
            pass
    assert waiting.value.code == "reconnecting"
    assert abs((waiting.value.until - until).total_seconds()) < 0.1
    # Telegram is back: after the backoff the next call reconnects, the account is active.
    await asyncio.sleep((until - datetime.now(UTC)).total_seconds() + 0.05)
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
