"""A sandbox DC in process, and tgflow's gateway and worker pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from services.sandbox.admin_client import SandboxAdmin
from services.sandbox.server import Sandbox
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
