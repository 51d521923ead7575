"""Priorities: due high-priority jobs start before due normal ones, never before their time."""

from __future__ import annotations

import time
from typing import Any

import httpx
from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis

from shared.jobs import QueueKind, queue_key
from shared.jobs.routing import Priority, due_ms_of, is_high
from shared.queue import JobStore
from tests import breakable
from tests.helpers import auth, eventually, gateway_client, running_worker, wait_for_status


async def _submit(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    response = await client.post("/v1/jobs", json=body, headers=auth())
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def test_high_priority_jobs_start_first_and_deferred_ones_wait(
    tgflow_env: dict[str, str],
) -> None:
    async with gateway_client() as client:
        normal = [
            await _submit(client, {"type": "system.echo", "params": {"message": f"n{i}"}})
            for i in range(6)
        ]
        later = await _submit(
            client, {"type": "system.echo", "priority": "high", "defer_seconds": 1.5}
        )
        high = [
            await _submit(client, {"type": "system.echo", "priority": "high"}) for _ in range(3)
        ]
        async with running_worker(worker_concurrency=1, worker_poll_delay=0.05):
            done = [await wait_for_status(client, j, {"succeeded"}) for j in normal + high]
            deferred = await wait_for_status(client, later, {"succeeded"})
    started = {job["id"]: job["started_at"] for job in done}
    assert max(started[j] for j in high) < min(started[j] for j in normal)
    assert all(job["priority"] == "high" for job in done if job["id"] in high)
    # The deferred high job waited for its time, after the normal backlog was served.
    assert deferred["started_at"] >= deferred["run_at"]
    assert deferred["started_at"] > max(started.values())


async def test_an_unknown_priority_is_a_422(tgflow_env: dict[str, str]) -> None:
    async with gateway_client() as client:
        response = await client.post(
            "/v1/jobs", json={"type": "system.echo", "priority": "urgent"}, headers=auth()
        )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


async def test_a_deferred_high_job_stays_in_the_high_band(
    tgflow_env: dict[str, str], switch: breakable.Switch, store: JobStore, redis: Redis
) -> None:
    """ARQ re-scores a job it retries; the consumer keeps a high job's score high."""
    params = {"defer_first": True, "defer_seconds": 30}
    job_id = await breakable.submit(store, params=params, priority=Priority.HIGH)
    async with running_worker(worker_poll_delay=0.05):

        async def deferred() -> float | None:
            record = await store.get(job_id)
            if record is None or record.error is None or record.status != "queued":
                return None
            if await redis.exists(in_progress_key_prefix + job_id):
                return None  # the deferral is recorded; ARQ's finish has yet to re-score
            score: float | None = await redis.zscore(queue_key(QueueKind.CONTROL), job_id)
            return score

        score = await eventually(deferred, timeout=10)
    assert switch.runs == [(job_id, 1)]
    assert is_high(score)
    assert due_ms_of(score) - time.time() * 1000 > 25_000  # due in ~30 s, not early
