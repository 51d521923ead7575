"""The whole pipeline in real OS processes: HTTP -> Redis -> worker -> Postgres."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx

from tests.e2e.conftest import workers_live
from tests.helpers import Proc, auth, eventually, wait_for_status

FAST_WORKER = {
    "TGFLOW_WORKER_DRAIN_SECONDS": "0.3",
    "TGFLOW_JOB_LEASE_SECONDS": "3",
    "TGFLOW_LOG_LEVEL": "INFO",  # shown when a process test fails
    "TGFLOW_LOG_JSON": "false",
}


async def test_echo_through_real_processes(
    gateway: tuple[httpx.AsyncClient, Proc],
    spawn: Callable[..., Proc],
    pg: asyncpg.Connection[Any],
) -> None:
    client, _ = gateway
    spawn("worker")
    await workers_live(client, 1)
    response = await client.post(
        "/v1/jobs", json={"type": "system.echo", "params": {"message": "e2e"}}, headers=auth()
    )
    assert response.status_code == 202
    job = await wait_for_status(client, response.json()["id"], {"succeeded"})
    assert job["result"] == {"message": "e2e", "data": None}

    async def archived() -> Any:
        return await pg.fetchrow(
            "SELECT * FROM jobs WHERE id = $1 AND status = 'succeeded'", uuid.UUID(job["id"])
        )

    row = await eventually(archived)
    assert row["tenant_id"] == "acme"
    assert row["result"] == '{"message": "e2e", "data": null}' or row["result"]
    assert row["attempts"] == 1
    assert row["started_at"] >= row["created_at"]
    assert row["finished_at"] >= row["started_at"]


async def test_sigterm_mid_job_hands_it_back_and_a_restart_finishes_it(
    gateway: tuple[httpx.AsyncClient, Proc], spawn: Callable[..., Proc]
) -> None:
    client, _ = gateway
    first = spawn("worker", env=FAST_WORKER)
    await workers_live(client, 1)
    job_id = (
        await client.post(
            "/v1/jobs", json={"type": "system.sleep", "params": {"seconds": 2}}, headers=auth()
        )
    ).json()["id"]
    await wait_for_status(client, job_id, {"running"})
    first.signal(signal.SIGTERM)
    code = await first.wait(timeout=15)
    assert code == 0, first.output()
    handed_back = (await client.get(f"/v1/jobs/{job_id}", headers=auth())).json()
    assert handed_back["status"] == "queued", first.output()
    second = spawn("worker", env=FAST_WORKER)
    try:
        job = await wait_for_status(client, job_id, {"succeeded"}, timeout=20)
    except AssertionError:
        print(second.output())
        raise
    assert job["attempts"] == 1  # a hand-back is the worker's doing: no try is spent


async def test_sigkill_mid_job_runs_again_within_the_lease(
    gateway: tuple[httpx.AsyncClient, Proc], spawn: Callable[..., Proc]
) -> None:
    client, _ = gateway
    doomed = spawn("worker", env=FAST_WORKER)
    await workers_live(client, 1)
    job_id = (
        await client.post(
            "/v1/jobs", json={"type": "system.sleep", "params": {"seconds": 1}}, headers=auth()
        )
    ).json()["id"]
    await wait_for_status(client, job_id, {"running"})
    await asyncio.sleep(0.3)  # inside the handler: the claim records "running" just before
    doomed.signal(signal.SIGKILL)
    await doomed.wait()
    spawn("worker", env=FAST_WORKER)
    job = await wait_for_status(client, job_id, {"succeeded"}, timeout=15)
    assert job["attempts"] == 2
