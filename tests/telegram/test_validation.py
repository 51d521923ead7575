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

from services.sandbox.admin_client import SandboxAdmin
from services.sandbox.server import Sandbox
from services.worker.telegram import upkeep
from services.worker.telegram.runtime import TelegramRuntime
from services.worker.telegram.upkeep import validate_idle_sessions
from services.worker.telegram.vault import Vault, vault_from_settings
from shared.config import WorkerSettings
from shared.db import create_pool
from shared.redis_client import create_redis
from tests.helpers import eventually
from tests.telegram.conftest import import_account


@pytest.fixture
async def validator(sandbox: Sandbox) -> AsyncIterator[TelegramRuntime]:
    settings = WorkerSettings(
        sandbox_dc=f"127.0.0.1:{sandbox.mtproto_port}", telegram_validate_seconds=0.01
    )
    pool, redis = await create_pool(settings, role="test"), create_redis(settings)
    vault = vault_from_settings(None, settings.secret_key.get_secret_value())
    rt = TelegramRuntime(settings, pool, redis, vault, "validator")
    yield rt
    await rt.close()
    await pool.close()
    await redis.aclose()


async def _events(pg: asyncpg.Connection[Any], account_id: uuid.UUID) -> list[tuple[str, Any]]:
    rows = await pg.fetch(
        "SELECT kind, details::text FROM account_events WHERE account_id = $1 ORDER BY id",
        account_id,
    )
    return [(r["kind"], json.loads(r["details"])) for r in rows]


async def test_a_session_that_cannot_be_opened_is_disabled_and_validation_goes_on(
    api: httpx.AsyncClient,
    admin: SandboxAdmin,
    pg: asyncpg.Connection[Any],
    validator: TelegramRuntime,
) -> None:
    dead, created = await import_account(api, admin)
    await admin.add_fault(created["user_id"], "revoke")
    # A row sealed under a key this worker no longer has, checked first (never used).
    lost = uuid.UUID(int=1)
    sealed = Vault.parse(Vault.generate_entry("gone")).seal("1" + "A" * 352, aad=lost.bytes)
    await pg.execute(
        """INSERT INTO accounts (id, tenant_id, tg_user_id, state, session_ciphertext,
               session_wrapped_key, session_key_id)
           VALUES ($1, 'acme', 1, 'active', $2, $3, $4)""",
        lost,
        sealed.ciphertext,
        sealed.wrapped_key,
        sealed.key_id,
    )
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
    reasons = dict(await pg.fetch("SELECT id, disabled_reason FROM accounts"))
    assert reasons == {lost: "invalid", uuid.UUID(dead["id"]): "revoked"}
    events = await _events(pg, lost)
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
