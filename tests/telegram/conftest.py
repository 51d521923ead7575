"""A sandbox DC in process, and tgflow's gateway and worker pointed at it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY
from telethon.sessions import StringSession

from services.sandbox.admin_client import SandboxAdmin
from services.sandbox.client import make_client, sandbox_session
from services.sandbox.server import Sandbox
from services.worker.telegram.runtime import TelegramRuntime
from services.worker.telegram.vault import Sealed, vault_from_settings
from shared.config import WorkerSettings
from shared.db import create_pool
from shared.redis_client import create_redis
from tests.helpers import auth, gateway_client, running_worker


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox() as running:
        yield running


@pytest.fixture
async def admin(sandbox: Sandbox) -> AsyncIterator[SandboxAdmin]:
    async with SandboxAdmin(sandbox.admin_url) as client:
        yield client


@pytest.fixture
async def api(sandbox: Sandbox) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway plus one worker (a single owner for every account)."""
    dc = f"127.0.0.1:{sandbox.mtproto_port}"
    async with gateway_client() as client, running_worker(worker_poll_delay=0.05, sandbox_dc=dc):
        yield client


async def import_account(
    api: httpx.AsyncClient, admin: SandboxAdmin, tenant: str = "acme", **fields: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A sandbox account imported into tgflow: (tgflow account, sandbox account)."""
    created = await admin.create_account(**fields)
    response = await api.post(
        "/v1/accounts/import",
        json={"session_string": created["session_string"]},
        headers=auth(tenant),
    )
    assert response.status_code == 201, response.text
    return response.json(), created


async def open_runtime(sandbox: Sandbox, name: str, **overrides: Any) -> TelegramRuntime:
    """A worker's Telegram runtime on its own pools, pointed at the sandbox DC."""
    settings = WorkerSettings(sandbox_dc=f"127.0.0.1:{sandbox.mtproto_port}", **overrides)
    vault = vault_from_settings(None, settings.secret_key.get_secret_value())
    db, redis = await create_pool(settings, role="test"), create_redis(settings)
    return TelegramRuntime(settings, db, redis, vault, name)


async def close_runtime(rt: TelegramRuntime) -> None:
    await rt.close()
    await rt.db.close()
    await rt.redis.aclose()


async def insert_sealed(
    pg: asyncpg.Connection[Any],
    account_id: uuid.UUID,
    tg_user_id: int,
    sealed: Sealed,
    ciphertext: bytes | None = None,
) -> None:
    """An active account row of tenant acme holding ``sealed`` (or ``ciphertext`` in its
    place), written straight to PostgreSQL."""
    await pg.execute(
        """INSERT INTO accounts (id, tenant_id, tg_user_id, state, session_ciphertext,
               session_wrapped_key, session_key_id)
           VALUES ($1, 'acme', $2, 'active', $3, $4, $5)""",
        account_id,
        tg_user_id,
        sealed.ciphertext if ciphertext is None else ciphertext,
        sealed.wrapped_key,
        sealed.key_id,
    )


def signed_in(sandbox: Sandbox, session: str) -> bool:
    """Whether the sandbox DC has the session's auth key logged in to an account."""
    key = StringSession(session).auth_key
    assert key is not None
    record = sandbox.core.keys.get(key.key_id)
    return record is not None and record.user_id is not None


async def stored_session(pg: asyncpg.Connection[Any], account_id: str) -> str:
    """The session tgflow stores for an account, opened."""
    row = await pg.fetchrow("SELECT * FROM accounts WHERE id = $1", uuid.UUID(account_id))
    vault = vault_from_settings(None, WorkerSettings().secret_key.get_secret_value())
    sealed = Sealed(
        row["session_key_id"], bytes(row["session_wrapped_key"]), bytes(row["session_ciphertext"])
    )
    return vault.open(sealed, aad=row["id"].bytes)


def requests_counted(account_id: object, outcome: str, method: str = "users.getUsers") -> float:
    """``tgflow_telegram_requests_total`` of one account, method and outcome so far."""
    labels = {"account": str(account_id), "method": method, "outcome": outcome}
    return REGISTRY.get_sample_value("tgflow_telegram_requests_total", labels) or 0.0


async def another_session(sandbox: Sandbox, phone: str) -> str:
    """A second session of the user with this phone, signed in outside tgflow."""
    client = make_client(sandbox_session(2, "127.0.0.1", sandbox.mtproto_port))
    await client.connect()
    try:
        await client.send_code_request(phone)
        await client.sign_in(phone, "22222")
        session: str = client.session.save()
        return session
    finally:
        await client.disconnect()
