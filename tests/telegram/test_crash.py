"""Exactly once across a worker killed in the middle of a send (a real OS process)."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from services.sandbox.admin_client import SandboxAdmin
from services.sandbox.server import Sandbox
from tests.helpers import Proc, auth, eventually, gateway_client, wait_for_status
from tests.telegram.conftest import import_account


@pytest.fixture
async def gateway_only() -> AsyncIterator[httpx.AsyncClient]:
    async with gateway_client() as client:
        yield client


def worker(sandbox: Sandbox) -> Proc:
    return Proc(
        "worker",
        env={
            "TGFLOW_SANDBOX_DC": f"127.0.0.1:{sandbox.mtproto_port}",
            "TGFLOW_JOB_LEASE_SECONDS": "3",
            "TGFLOW_WORKER_DRAIN_SECONDS": "0.3",
        },
    ).start()


async def test_a_send_survives_its_worker_being_killed_after_telegram_acted(
    sandbox: Sandbox, admin: SandboxAdmin, gateway_only: httpx.AsyncClient
) -> None:
    api = gateway_only
    first = worker(sandbox)
    second: Proc | None = None
    try:
        account, created = await _import(api, admin)
        # The DC stores the message, then holds its answer: the worker is killed meanwhile.
        await admin.add_fault(
            created["user_id"], "delay_after", method="messages.sendMessage", seconds=30
        )
        response = await api.post(
            "/v1/jobs",
            json={
                "type": "telegram.send_message",
                "params": {"account_id": account["id"], "peer": "me", "text": "exactly once"},
            },
            headers=auth(),
        )
        job_id = response.json()["id"]

        async def stored() -> Any:
            return await admin.messages(created["user_id"])

        original = (await eventually(stored, timeout=15))[0]
        first.signal(signal.SIGKILL)
        await first.wait()
        second = worker(sandbox)
        job = await wait_for_status(api, job_id, {"succeeded", "failed"}, timeout=30)
        assert job["status"] == "succeeded", (job, second.output())
        assert job["attempts"] == 2
        assert job["result"]["message_id"] == original["id"]
        assert job["result"]["random_id"] == original["random_id"]
        messages = await admin.messages(created["user_id"])
        assert [m["text"] for m in messages] == ["exactly once"]
    finally:
        first.stop()
        if second is not None:
            second.stop()


async def _import(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> tuple[dict[str, Any], dict[str, Any]]:
    async def imported() -> Any:
        try:
            return await import_account(api, admin)
        except AssertionError:
            return None

    result: tuple[dict[str, Any], dict[str, Any]] = await eventually(imported, timeout=20)
    return result
