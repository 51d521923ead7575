"""A shard handed to another worker: nothing of this worker's still connects its accounts
once the hand-off disconnects them, so a session is never connected from two places."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis
from telethon import types
from telethon.tl.functions.users import GetUsersRequest

from services.sandbox.admin_client import SandboxAdmin
from services.sandbox.client import auth_key_id
from services.sandbox.server import Sandbox
from services.worker.main import build_shards, close_state, open_state
from services.worker.shards import ShardManager
from services.worker.state import WorkerState
from services.worker.telegram import accounts
from services.worker.telegram.upkeep import _disconnect as listener_disconnect
from services.worker.telegram.upkeep import validate_idle_sessions
from shared.config import WorkerSettings
from shared.errors import Deferral
from shared.jobs.routing import shard_lease_key
from tests.helpers import eventually
from tests.telegram.conftest import close_runtime, insert_sealed, open_runtime


@dataclass
class Leaving:
    """A worker's state holding the one shard, with accounts stored for it."""

    state: WorkerState
    shards: ShardManager
    ids: list[uuid.UUID]
    sessions: list[str]
    users: list[int]


async def leaving_worker(
    sandbox: Sandbox, admin: SandboxAdmin, pg: asyncpg.Connection[Any], n: int, **extra: Any
) -> Leaving:
    settings = WorkerSettings(
        sandbox_dc=f"127.0.0.1:{sandbox.mtproto_port}",
        instance_name="leaving",
        telegram_shards=1,
        shard_lease_seconds=30,
        shard_handoff_seconds=0.2,
        **extra,
    )
    state = await open_state(settings, "leaving")
    shards = build_shards(state)
    assert shards is not None
    await pg.execute(
        "INSERT INTO tenants (id, name) VALUES ('acme', 'acme') ON CONFLICT DO NOTHING"
    )
    made = Leaving(state, shards, [], [], [])
    for _ in range(n):
        created = await admin.create_account()
        account_id = uuid.uuid4()
        sealed = state.telegram.vault.seal(created["session_string"], aad=account_id.bytes)
        await insert_sealed(pg, account_id, created["user_id"], sealed)
        made.ids.append(account_id)
        made.sessions.append(created["session_string"])
        made.users.append(created["user_id"])
    await shards._take(0)
    return made


async def test_a_background_connect_during_a_hand_off_is_refused_not_left_open(
    sandbox: Sandbox, admin: SandboxAdmin, pg: asyncpg.Connection[Any], redis: Redis
) -> None:
    made = await leaving_worker(sandbox, admin, pg, 21)
    state, shards, rt = made.state, made.shards, made.state.telegram
    ids, sessions, users = made.ids, made.sessions, made.users
    *others, late = ids
    try:
        for account_id in others:  # connected clients: the hand-off closes them one by one
            account = await accounts.load(rt.db, account_id)
            assert account is not None
            async with rt.pool.lease(account):
                pass
        # Telegram takes its time with the late account's first request.
        await admin.add_fault(users[-1], "delay", seconds=0.3, times=1)
        shards._start_handoff(0)
        while rt.pool.holds(others[0]):  # the jobs are drained; disconnecting has begun
            await asyncio.sleep(0)

        async def background_check() -> None:  # as validation or recovery would
            async with rt.session("acme", late, quiet=True) as tg:
                await tg.call(
                    "users.getUsers", lambda: tg.client(GetUsersRequest([types.InputUserSelf()]))
                )

        check = asyncio.create_task(background_check())
        while await redis.get(shard_lease_key(0)) is not None:
            await asyncio.sleep(0)
        # The next owner connects the account the moment the lease is free.
        taker = await open_runtime(sandbox, "taking")
        try:
            account = await accounts.load(taker.db, late)
            assert account is not None
            async with taker.pool.lease(account):
                await asyncio.sleep(0.5)
        finally:
            await close_runtime(taker)
        with pytest.raises(Deferral) as refused:
            await check
        assert refused.value.code == "shard_moved"
    finally:
        await close_state(state)
    key = auth_key_id(sessions[-1])
    assert [o for o in await admin.overlaps() if o["auth_key_id"] == key] == []


async def test_upkeep_goes_on_when_clients_close_under_its_requests(
    sandbox: Sandbox, admin: SandboxAdmin, pg: asyncpg.Connection[Any]
) -> None:
    """Telethon cancels a request whose client is disconnected under it. A hand-off that
    does so to a health check and to a validation ends neither loop, and a requested
    disconnect waits for the health check it meets (and then closes the client, which
    the check held out of the pool)."""
    made = await leaving_worker(
        sandbox,
        admin,
        pg,
        3,
        telegram_idle_seconds=4.0,
        telegram_health_seconds=0.4,
        telegram_validate_seconds=1.0,
    )
    state, shards, rt = made.state, made.shards, made.state.telegram
    ids, users = made.ids, made.users
    checked, asked_off, validated = ids
    stop = asyncio.Event()
    try:
        for account_id in (checked, asked_off):
            account = await accounts.load(rt.db, account_id)
            assert account is not None
            async with rt.pool.lease(account):
                pass
        await pg.execute(  # only the third account is due for validation
            "UPDATE accounts SET validated_at = now() WHERE id = ANY($1)", [checked, asked_off]
        )
        for user in users:  # Telegram takes half a second over each check
            await admin.add_fault(user, "delay", method="users.getUsers", seconds=0.5)
        loops = [
            asyncio.create_task(rt.pool.run_maintenance(stop)),
            asyncio.create_task(validate_idle_sessions(rt, stop)),
        ]
        while rt.pool._entries[asked_off].in_use == 0:  # its health check is under way
            await asyncio.sleep(0.01)
        await listener_disconnect(rt, str(asked_off))  # DELETE .../connections/{id}
        assert not rt.pool.holds(asked_off)  # the account's next job gets a new client,
        assert rt.pool.is_connected(asked_off)  # but the connection waits for the check...

        async def gone() -> bool:
            return not rt.pool.is_connected(asked_off)

        await eventually(gone, timeout=2)  # ...then goes

        def in_flight(account_id: uuid.UUID) -> bool:  # connected, a request under way
            entry = rt.pool._entries.get(account_id)
            return entry is not None and entry.in_use > 0 and entry.client.is_connected()

        while not (in_flight(validated) and in_flight(checked)):
            await asyncio.sleep(0.01)  # a validation and a health check wait for answers
        shards._start_handoff(0)  # closes both under their requests
        await asyncio.sleep(1.5)
        assert [loop.done() for loop in loops] == [False, False]
    finally:
        stop.set()
        await asyncio.gather(*loops, return_exceptions=True)
        await close_state(state)
