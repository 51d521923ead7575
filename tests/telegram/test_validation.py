"""Periodic validation of idle sessions: it survives bad rows and reaches every account."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis
from telethon.sessions import StringSession

from services.sandbox.admin_client import SandboxAdmin
from services.sandbox.server import Sandbox
from services.worker.telegram import upkeep
from services.worker.telegram.runtime import TelegramRuntime
from services.worker.telegram.upkeep import prune_once, validate_idle_sessions, validate_once
from services.worker.telegram.vault import Vault
from shared.telegram_keys import presence_key
from tests.helpers import eventually
from tests.telegram.conftest import (
    close_runtime,
    import_account,
    insert_sealed,
    open_runtime,
    requests_counted,
)
from tests.telegram.test_jobs import run


@pytest.fixture
async def validator(sandbox: Sandbox) -> AsyncIterator[TelegramRuntime]:
    rt = await open_runtime(sandbox, "validator", telegram_validate_seconds=0.01)
    yield rt
    await close_runtime(rt)


async def _events(pg: asyncpg.Connection[Any], account_id: uuid.UUID) -> list[tuple[str, Any]]:
    rows = await pg.fetch(
        "SELECT kind, details::text FROM account_events WHERE account_id = $1 ORDER BY id",
        account_id,
    )
    return [(r["kind"], json.loads(r["details"])) for r in rows]


async def test_a_damaged_session_is_disabled_a_missing_key_is_not_and_validation_goes_on(
    api: httpx.AsyncClient,
    admin: SandboxAdmin,
    pg: asyncpg.Connection[Any],
    validator: TelegramRuntime,
) -> None:
    dead, created = await import_account(api, admin)
    await admin.add_fault(created["user_id"], "revoke")
    # Checked first (never used): a row sealed under a key this worker does not have (an
    # operator dropped it too early: putting it back must be enough) and a damaged row.
    keyless, damaged = uuid.UUID(int=1), uuid.UUID(int=2)
    elsewhere = Vault.parse(Vault.generate_entry("gone")).seal("1" + "A" * 352, aad=keyless.bytes)
    ours = validator.vault.seal("1" + "A" * 352, aad=damaged.bytes)
    await insert_sealed(pg, keyless, 1, elsewhere)
    await insert_sealed(pg, damaged, 2, ours, bytes([ours.ciphertext[0] ^ 1]) + ours.ciphertext[1:])
    stop = asyncio.Event()
    loop = asyncio.create_task(validate_idle_sessions(validator, stop))
    try:

        async def both_disabled() -> bool:
            states = await pg.fetch(
                "SELECT id, state, disabled_reason FROM accounts WHERE state = 'disabled'"
            )
            return len(states) == 2

        await eventually(both_disabled, timeout=10)
        assert not loop.done()
    finally:
        stop.set()
        await loop
    states = {
        r["id"]: tuple(r[1:])
        for r in await pg.fetch("SELECT id, state, disabled_reason FROM accounts")
    }
    assert states == {
        keyless: ("active", None),
        damaged: ("disabled", "invalid"),
        uuid.UUID(dead["id"]): ("disabled", "revoked"),
    }
    assert await _events(pg, keyless) == []
    events = await _events(pg, damaged)
    assert events[0] == (
        "state_change",
        {"from": "active", "to": "disabled", "reason": "invalid", "error": "session_unreadable"},
    )
    assert events[1][0] == "error"
    assert events[1][1]["code"] == "session_unreadable"


async def test_the_validation_loop_outlives_any_error_of_a_round(
    validator: TelegramRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    rounds: list[int] = []

    async def flaky(runtime: TelegramRuntime) -> int:
        rounds.append(1)
        if len(rounds) == 1:
            raise asyncpg.exceptions.AdminShutdownError("terminating connection")
        if len(rounds) == 2:
            raise RuntimeError("a bug")
        return 0

    monkeypatch.setattr(upkeep, "validate_once", flaky)
    stop = asyncio.Event()
    loop = asyncio.create_task(validate_idle_sessions(validator, stop))

    async def third_round() -> bool:
        return len(rounds) >= 3

    await eventually(third_round, timeout=5)
    assert not loop.done()
    loop.cancel()  # cancellation still ends it
    with pytest.raises(asyncio.CancelledError):
        await loop


async def test_accounts_validation_may_not_check_never_hide_an_idle_dead_one(
    api: httpx.AsyncClient,
    admin: SandboxAdmin,
    pg: asyncpg.Connection[Any],
    redis: Redis,
    validator: TelegramRuntime,
) -> None:
    dead, created = await import_account(api, admin)
    dead_id = uuid.UUID(dead["id"])
    await admin.add_fault(created["user_id"], "revoke")
    await pg.execute(
        "UPDATE accounts SET last_used_at = now() - interval '2 hours' WHERE id = $1", dead_id
    )
    # More than a page (and the per-pass limit) of rows sorting before it: connected
    # now on some worker, or of shards another worker holds.
    connected = [uuid.UUID(int=i) for i in range(1, 301)]
    foreign = {uuid.UUID(int=i) for i in range(301, 601)}
    await pg.executemany(
        """INSERT INTO accounts (id, tenant_id, tg_user_id, state, session_ciphertext,
               session_wrapped_key, session_key_id)
           VALUES ($1, 'acme', $2, 'active', '\\x00', '\\x00', 'dev')""",
        [(a, 10_000 + a.int) for a in [*connected, *foreign]],
    )
    async with redis.pipeline() as pipe:
        for account_id in connected:
            pipe.hset(presence_key(account_id), mapping={"worker": "worker-other"})
        await pipe.execute()
    validator.pool.may_connect = lambda account_id: account_id not in foreign

    assert await validate_once(validator, limit=500, page=200) == 1
    row = await pg.fetchrow("SELECT state, disabled_reason FROM accounts WHERE id = $1", dead_id)
    assert (row["state"], row["disabled_reason"]) == ("disabled", "revoked")
    validated = {
        r["id"] for r in await pg.fetch("SELECT id FROM accounts WHERE validated_at IS NOT NULL")
    }
    assert validated == {*connected, dead_id}  # other shards' rows are their owners' to mark
    assert await validate_once(validator) == 0  # nothing left of ours until the next interval


async def test_a_job_marks_its_account_used_at_most_once_a_minute(
    api: httpx.AsyncClient, admin: SandboxAdmin, pg: asyncpg.Connection[Any]
) -> None:
    account, _ = await import_account(api, admin)
    account_id = uuid.UUID(account["id"])
    assert await pg.fetchval("SELECT last_used_at FROM accounts WHERE id = $1", account_id) is None
    assert (await run(api, "telegram.get_me", account_id=account["id"]))["status"] == "succeeded"

    async def used() -> Any:
        return await pg.fetchval("SELECT last_used_at FROM accounts WHERE id = $1", account_id)

    first = await eventually(used, timeout=5)
    assert (await run(api, "telegram.get_me", account_id=account["id"]))["status"] == "succeeded"
    await asyncio.sleep(0.2)
    assert await used() == first  # within the minute: no second write


async def test_validation_connects_to_the_known_dc_not_to_the_address_a_session_names(
    api: httpx.AsyncClient,
    admin: SandboxAdmin,
    pg: asyncpg.Connection[Any],
    validator: TelegramRuntime,
) -> None:
    imported, created = await import_account(api, admin)
    account_id = uuid.UUID(imported["id"])
    knocks: list[int] = []

    async def knock(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        knocks.append(1)
        writer.close()

    elsewhere = await asyncio.start_server(knock, "127.0.0.1", 0)
    port = elsewhere.sockets[0].getsockname()[1]
    try:  # a stored session that names another address (stored before addresses were pinned)
        session = StringSession(created["session_string"])
        session.set_dc(session.dc_id, "127.0.0.1", port)
        sealed = validator.vault.seal(session.save(), aad=account_id.bytes)
        await pg.execute(
            "UPDATE accounts SET session_ciphertext = $2, session_wrapped_key = $3,"
            " session_key_id = $4 WHERE id = $1",
            account_id,
            sealed.ciphertext,
            sealed.wrapped_key,
            sealed.key_id,
        )
        await admin.add_fault(created["user_id"], "revoke")  # seen only at the real DC
        assert await validate_once(validator) == 1
    finally:
        elsewhere.close()
        await elsewhere.wait_closed()
    assert knocks == []
    state = await pg.fetchrow(
        "SELECT state, disabled_reason FROM accounts WHERE id = $1", account_id
    )
    assert tuple(state) == ("disabled", "revoked")


async def test_validation_uses_the_pool_client_a_job_shares_it_and_it_leaves_no_events(
    api: httpx.AsyncClient,
    admin: SandboxAdmin,
    pg: asyncpg.Connection[Any],
    validator: TelegramRuntime,
) -> None:
    imported, created = await import_account(api, admin)
    account_id = uuid.UUID(imported["id"])
    before = requests_counted(account_id, "ok")
    assert await validate_once(validator) == 1
    # Counted like any request: the check's, and the users.getUsers of its connect.
    assert requests_counted(account_id, "ok") == before + 2
    assert not validator.pool.holds(account_id)  # not kept connected past the check
    await asyncio.sleep(0.1)  # the pool's background writes
    assert [kind for kind, _ in await _events(pg, account_id)] == ["imported"]  # no connects

    # A job wanting the account while it is being validated: one connection, not two.
    await pg.execute("UPDATE accounts SET validated_at = NULL WHERE id = $1", account_id)
    await admin.add_fault(created["user_id"], "delay", method="users.getUsers", seconds=1, times=1)
    validation = asyncio.create_task(validate_once(validator))
    await asyncio.sleep(0.3)
    async with validator.session("acme", account_id) as tg:
        await tg.call("users.getUsers", lambda: tg.client.get_me())
    assert await validation == 1
    assert await admin.overlaps() == []
    await asyncio.sleep(0.1)
    kinds = [kind for kind, _ in await _events(pg, account_id)]
    assert kinds == ["imported", "connect", "disconnect"]  # the one a job used is on record


async def test_abandoned_logins_and_old_account_events_are_pruned(
    pg: asyncpg.Connection[Any], validator: TelegramRuntime
) -> None:
    await pg.execute(
        "INSERT INTO tenants (id, name) VALUES ('acme', 'acme') ON CONFLICT DO NOTHING"
    )
    abandoned, pending, settled = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await pg.executemany(
        """INSERT INTO accounts (id, tenant_id, phone, state, session_ciphertext, updated_at)
           VALUES ($1, 'acme', '+15550001111', $2, '\\x00', now() - $3::text::interval)""",
        [
            (abandoned, "login_pending", "61 minutes"),  # past the hour's expiry
            (pending, "login_pending", "59 minutes"),
            (settled, "active", "3 days"),
        ],
    )
    await pg.executemany(
        """INSERT INTO account_events (account_id, tenant_id, kind, created_at)
           VALUES ($1, 'acme', $2, now() - $3::text::interval)""",
        [(settled, "old", "91 days"), (settled, "recent", "89 days"), (abandoned, "x", "1 day")],
    )
    assert await prune_once(validator) == (1, 1)
    left = {r["id"] for r in await pg.fetch("SELECT id FROM accounts")}
    assert left == {pending, settled}
    kinds = [r["kind"] for r in await pg.fetch("SELECT kind FROM account_events")]
    assert kinds == ["recent"]  # the old one aged out, the abandoned login's went with it
    assert await prune_once(validator) == (0, 0)
