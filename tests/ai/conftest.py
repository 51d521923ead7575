"""AI job fixtures: an in-process sandbox model endpoint and a provider catalogue on it."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from services.sandbox.admin_client import SandboxAdmin
from services.sandbox.server import Sandbox
from tests.helpers import auth, gateway_client, running_worker, wait_for_status

Configure = Callable[..., dict[str, Any]]


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox() as running:
        yield running


@pytest.fixture
async def model(sandbox: Sandbox) -> AsyncIterator[SandboxAdmin]:
    async with SandboxAdmin(sandbox.admin_url) as admin:
        yield admin


@pytest.fixture
def providers(monkeypatch: pytest.MonkeyPatch, model: SandboxAdmin) -> Configure:
    """Set TGFLOW_AI_PROVIDERS (gateway and worker read it): a "sandbox" provider on the
    running sandbox, with fields overridden by keyword, plus any ``extra`` providers."""

    def configure(extra: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
        provider = {
            "name": "sandbox",
            "base_url": model.openai_base_url,
            "default_model": "sandbox-extractive-1",
            "models": {"sandbox-extractive-1": {"context_tokens": 4096}},
            "read_timeout": 5.0,
            **fields,
        }
        monkeypatch.setenv("TGFLOW_AI_PROVIDERS", json.dumps([provider, *(extra or [])]))
        return provider

    configure()
    return configure


@contextlib.asynccontextmanager
async def ai_stack(**worker: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway and an in-process worker consuming the ai queue."""
    worker.setdefault("worker_queues", "ai")
    worker.setdefault("worker_poll_delay", 0.05)
    async with gateway_client() as client, running_worker(**worker):
        yield client


async def submit(client: httpx.AsyncClient, params: dict[str, Any], **extra: Any) -> str:
    response = await client.post(
        "/v1/jobs", json={"type": "ai.complete", "params": params, **extra}, headers=auth()
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


async def run(client: httpx.AsyncClient, params: dict[str, Any], **wait: Any) -> dict[str, Any]:
    """Submit an ai.complete job and wait for it to finish."""
    job_id = await submit(client, params)
    wait.setdefault("timeout", 15)
    return await wait_for_status(client, job_id, {"succeeded", "failed"}, **wait)


async def model_requests(model: SandboxAdmin) -> int:
    """How many chat completions the sandbox has answered (or refused)."""
    config: dict[str, Any] = await model._call("GET", "/admin/ai/config")
    count: int = config["requests"]
    return count
