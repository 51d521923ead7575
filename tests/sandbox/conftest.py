"""Fixtures for the sandbox DC: an in-process Sandbox, its admin API, and clients.

The sandbox needs neither PostgreSQL nor Redis, so the suite-wide database
fixtures are replaced by no-ops here; the loopback and blocking-sleep guards
of tests/conftest.py still apply.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from telethon import TelegramClient

from services.sandbox.client import make_client, register_sandbox_key
from services.sandbox.server import Sandbox


@pytest.fixture(scope="session")
def database_url() -> str:
    return "postgresql://unused-by-sandbox-tests/none"


@pytest.fixture(autouse=True)
def clean_state() -> None:
    """The sandbox keeps its state in memory; every test gets a fresh one."""


@pytest.fixture(scope="session", autouse=True)
def sandbox_key() -> None:
    register_sandbox_key()


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox() as running:
        yield running


@pytest.fixture
async def admin(sandbox: Sandbox) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sandbox.admin_url, timeout=10) as client:
        yield client


AccountFactory = Callable[..., Awaitable[dict[str, Any]]]
ClientFactory = Callable[..., TelegramClient]


@pytest.fixture
def new_account(admin: httpx.AsyncClient) -> AccountFactory:
    async def create(**fields: Any) -> dict[str, Any]:
        response = await admin.post("/admin/accounts", json=fields)
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()
        return data

    return create


@pytest.fixture
async def new_client() -> AsyncIterator[ClientFactory]:
    """Build Telethon clients; all are disconnected when the test ends."""
    made: list[TelegramClient] = []

    def build(session: Any, **kwargs: Any) -> TelegramClient:
        client = make_client(session, **kwargs)
        made.append(client)
        return client

    yield build
    for client in made:
        await client.disconnect()


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 5.0, interval: float = 0.01
) -> None:
    """Poll until ``check`` holds, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(interval)
