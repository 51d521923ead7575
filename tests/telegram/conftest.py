"""A sandbox DC in process, and tgflow's gateway and worker pointed at it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY
from telethon import types, utils
from telethon.sessions import StringSession

from services.sandbox.admin_client import SandboxAdmin
from services.sandbox.client import make_client, sandbox_session
from services.sandbox.server import Sandbox
from services.worker.telegram.runtime import TelegramRuntime
from services.worker.telegram.vault import Sealed, vault_from_settings
from shared.config import WorkerSettings
from shared.db import create_pool
from shared.redis_client import create_redis
from tests.helpers import auth, eventually, gateway_client, running_worker, wait_for_status
from tests.proxy import DcProxy, dc_proxy


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
    async with serving(sandbox) as client:
        yield client


@contextlib.asynccontextmanager
async def serving(sandbox: Sandbox, **worker: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway plus one worker pointed at the sandbox DC, with ``worker`` settings."""
    dc = f"127.0.0.1:{sandbox.mtproto_port}"
    settings = {"worker_poll_delay": 0.05, "sandbox_dc": dc, **worker}
    async with gateway_client() as client, running_worker(**settings):
        yield client


@pytest.fixture
async def proxy(sandbox: Sandbox) -> AsyncIterator[DcProxy]:
    """The sandbox DC behind a proxy a test can cut, blackhole or flood."""
    async with dc_proxy(sandbox.mtproto_port) as running:
        yield running


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


@contextlib.asynccontextmanager
async def busy_account(
    api: httpx.AsyncClient, admin: SandboxAdmin, account_id: str, user_id: int
) -> AsyncIterator[list[str]]:
    """``telegram.get_me`` jobs for the account, one every 0.2 s, each held 0.6 s by the
    DC: about three on its client at any moment, never a pause. Yields the job ids
    (growing); once the block ends, every one of them must succeed."""
    slow = {"method": "users.getUsers", "seconds": 0.6, "times": 10_000}
    fault = await admin.add_fault(user_id, "delay", **slow)
    stop = asyncio.Event()
    ids: list[str] = []

    async def traffic() -> None:
        body = {"type": "telegram.get_me", "params": {"account_id": account_id}}
        while not stop.is_set():
            ids.append((await api.post("/v1/jobs", json=body, headers=auth())).json()["id"])
            await asyncio.sleep(0.2)

    feeding = asyncio.create_task(traffic())
    try:
        await eventually(lambda: asyncio.sleep(0, len(ids) > 3))
        await wait_for_status(api, ids[0], {"running", "succeeded"}, timeout=10)
        yield ids
        after = len(ids)
        await eventually(lambda: asyncio.sleep(0, len(ids) > after + 3))
    finally:
        stop.set()
        await feeding
        await admin.delete_fault(fault)
    for job_id in ids:
        job = await wait_for_status(api, job_id, {"succeeded", "failed"}, timeout=15)
        assert job["status"] == "succeeded", job


async def crowd(admin: SandboxAdmin, member: dict[str, Any], others: int) -> list[int]:
    """A supergroup @crowd_sb of ``member`` (a sandbox account) and ``others`` new members
    under a new owner; the user ids of the owner and the new members."""
    owner = await admin.create_account(first_name="Owner")
    members = [(await admin.create_account(first_name=f"M{i}"))["user_id"] for i in range(others)]
    await admin.create_chat(
        title="Crowd",
        kind="supergroup",
        creator_id=owner["user_id"],
        username="crowd_sb",
        members=[member["user_id"], *members],
    )
    return [owner["user_id"], *members]


def marked_id(chat: dict[str, Any]) -> int:
    """A sandbox chat's marked id (``-100...``): how results name it and jobs take it."""
    marked: int = utils.get_peer_id(types.PeerChannel(chat["chat_id"]))
    return marked


async def open_runtime(
    sandbox: Sandbox, name: str, dc: str | None = None, **overrides: Any
) -> TelegramRuntime:
    """A worker's Telegram runtime on its own pools, pointed at the sandbox DC (or at
    ``dc``, a proxy in front of it)."""
    settings = WorkerSettings(sandbox_dc=dc or f"127.0.0.1:{sandbox.mtproto_port}", **overrides)
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
