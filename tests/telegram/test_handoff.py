"""A shard handed to another worker: nothing of this worker's still connects its accounts
once the hand-off disconnects them, so a session is never connected from two places."""

from __future__ import annotations

import asyncio
import uuid
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
from services.worker.telegram import accounts
from shared.config import WorkerSettings
from shared.errors import Deferral
from shared.jobs.routing import shard_lease_key
from tests.telegram.conftest import close_runtime, insert_sealed, open_runtime


async def test_a_background_connect_during_a_hand_off_is_refused_not_left_open(
    sandbox: Sandbox, admin: SandboxAdmin, pg: asyncpg.Connection[Any], redis: Redis
) -> None:
    settings = WorkerSettings(
        sandbox_dc=f"127.0.0.1:{sandbox.mtproto_port}",
        instance_name="leaving",
        telegram_shards=1,
        shard_lease_seconds=30,
        shard_handoff_seconds=0.2,
    )
    state = await open_state(settings, "leaving")
    shards = build_shards(state)
    assert shards is not None
    rt = state.telegram
    await pg.execute(
        "INSERT INTO tenants (id, name) VALUES ('acme', 'acme') ON CONFLICT DO NOTHING"
    )
    ids, sessions, users = [], [], []
    for _ in range(21):
        created = await admin.create_account()
        account_id = uuid.uuid4()
        sealed = rt.vault.seal(created["session_string"], aad=account_id.bytes)
        await insert_sealed(pg, account_id, created["user_id"], sealed)
        ids.append(account_id)
        sessions.append(created["session_string"])
        users.append(created["user_id"])
    *others, late = ids
    try:
        await shards._take(0)
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
