"""Dead-lettering in the worker: error history, the dead-letter set and its bounds."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import orjson
import pytest
from prometheus_client import REGISTRY as METRICS
from redis.asyncio import Redis

from shared.jobs.envelope import from_micros
from shared.jobs.record import JobErrorInfo
from shared.queue import DEAD_LETTER_PLACEHOLDER, DEAD_LETTERS, HISTORY_MAX, JobStore, job_key
from tests import breakable
from tests.helpers import auth, eventually, gateway_client, running_worker, wait_for_status


def dead_lettered(code: str) -> float:
    labels = {"type": breakable.NAME, "code": code}
    return METRICS.get_sample_value("tgflow_jobs_dead_lettered_total", labels) or 0.0


async def run_until_finished(job_id: str) -> dict[str, Any]:
    async with gateway_client() as client, running_worker(worker_poll_delay=0.05):
        return await wait_for_status(client, job_id, {"succeeded", "failed"}, timeout=10)


async def archived(pg: asyncpg.Connection[Any], job_id: str) -> Any:
    return await eventually(
        lambda: pg.fetchrow(
            "SELECT * FROM jobs WHERE id = $1 AND dead_at IS NOT NULL", uuid.UUID(job_id)
        )
    )


async def test_exhausted_tries_are_dead_lettered_with_every_failure(
    switch: breakable.Switch, store: JobStore, redis: Redis, pg: asyncpg.Connection[Any]
) -> None:
    before = dead_lettered("server_error")
    job_id = await breakable.submit(store, params={"fail": "retryable"})
    job = await run_until_finished(job_id)
    assert job["status"] == "failed"
    assert job["attempts"] == breakable.MAX_TRIES
    history = job["history"]
    assert [h["attempt"] for h in history] == [1, 2, 3]
    assert [h["final"] for h in history] == [False, False, True]
    assert {h["code"] for h in history} == {"server_error"}
    assert [h["message"] for h in history] == [f"attempt {n} broke" for n in (1, 2, 3)]
    assert all(h["requeue"] == 0 for h in history)
    times = [datetime.fromisoformat(h["at"]) for h in history]
    assert times == sorted(times)
    stored = orjson.loads(await redis.hget(job_key(job_id), "history") or "[]")  # type: ignore[misc]
    assert re.fullmatch(r"\S+T\d\d:\d\d:\d\d\.\d{6}\+00:00", stored[0]["at"])  # UTC, microseconds
    assert job["dead_at"] is not None
    assert job["requeued"] == 0
    score = await redis.zscore(DEAD_LETTERS, job_id)
    assert score is not None
    assert score > 0
    assert dead_lettered("server_error") == before + 1
    row = await archived(pg, job_id)
    assert row["status"] == "failed"
    assert [h["attempt"] for h in orjson.loads(row["history"])] == [1, 2, 3]
    assert row["dead_at"] == datetime.fromisoformat(job["dead_at"])
    assert row["timeout"] == 5.0


async def test_permanent_failure_is_dead_lettered_after_one_try(
    switch: breakable.Switch, store: JobStore, redis: Redis, pg: asyncpg.Connection[Any]
) -> None:
    job_id = await breakable.submit(store, params={"fail": "permanent", "code": "bad_peer"})
    job = await run_until_finished(job_id)
    assert job["status"] == "failed"
    assert job["attempts"] == 1
    assert [(h["attempt"], h["code"], h["final"]) for h in job["history"]] == [
        (1, "bad_peer", True)
    ]
    assert switch.runs == [(job_id, 1)]
    assert await redis.zscore(DEAD_LETTERS, job_id) is not None
    assert (await archived(pg, job_id))["error_code"] == "bad_peer"


async def test_a_deferral_is_not_a_failure_in_the_history(
    switch: breakable.Switch, store: JobStore
) -> None:
    params = {"fail": "permanent", "code": "bad_peer", "defer_first": True}
    job_id = await breakable.submit(store, params=params)
    job = await run_until_finished(job_id)
    assert switch.runs == [(job_id, 1), (job_id, 1)]  # the wait did not spend a try
    assert [(h["attempt"], h["code"]) for h in job["history"]] == [(1, "bad_peer")]


async def test_cancelled_jobs_are_not_dead_lettered(
    redis: Redis, pg: asyncpg.Connection[Any]
) -> None:
    async with gateway_client() as client, running_worker(worker_poll_delay=0.05):
        body = {"type": "system.sleep", "params": {"seconds": 30}}
        running = (await client.post("/v1/jobs", json=body, headers=auth())).json()["id"]
        await wait_for_status(client, running, {"running"})
        queued = (
            await client.post("/v1/jobs", json={**body, "defer_seconds": 60}, headers=auth())
        ).json()["id"]
        for job_id in (running, queued):
            await client.delete(f"/v1/jobs/{job_id}", headers=auth())
        for job_id in (running, queued):
            job = await wait_for_status(client, job_id, {"cancelled"})
            assert job["dead_at"] is None
            assert job["history"] == []
        listed = (await client.get("/v1/dead-letters", headers=auth())).json()
    assert listed["items"] == []
    assert await redis.exists(DEAD_LETTERS) == 0
    rows = await eventually(
        lambda: pg.fetch("SELECT dead_at FROM jobs WHERE status = 'cancelled'"), timeout=5
    )
    assert len(rows) == 2
    assert all(r["dead_at"] is None for r in rows)


@pytest.mark.usefixtures("switch")
async def test_the_dead_letter_set_is_trimmed_by_size_and_age(redis: Redis) -> None:
    store = JobStore(redis, status_ttl=600, idempotency_ttl=600, shards=4, dead_letter_max=3)
    ids = [await breakable.submit(store) for _ in range(5)]
    for job_id in ids:
        await breakable.fail_in_store(store, job_id)
        await asyncio.sleep(0.003)  # scores are milliseconds: keep the order unambiguous
    members = await redis.zrange(DEAD_LETTERS, 0, -1)
    assert members == [DEAD_LETTER_PLACEHOLDER, *ids[2:]]  # the newest three, oldest first
    for job_id in ids:  # trimming the set does not undo the jobs' own record
        assert await redis.hget(job_key(job_id), "dead_at")  # type: ignore[misc]

    young = JobStore(redis, status_ttl=600, idempotency_ttl=600, shards=4, dead_letter_max_age=0.3)
    await asyncio.sleep(0.4)
    last = await breakable.submit(young)
    await breakable.fail_in_store(young, last)
    assert await redis.zrange(DEAD_LETTERS, 0, -1) == [DEAD_LETTER_PLACEHOLDER, last]


@pytest.mark.usefixtures("switch")
async def test_the_history_keeps_the_latest_failures(redis: Redis) -> None:
    store = JobStore(redis, status_ttl=600, idempotency_ttl=600, shards=4)
    job_id = await breakable.submit(store)
    for attempt in range(1, HISTORY_MAX + 6):
        await store.transition(
            job_id,
            {"status": "running", "attempts": str(attempt)},
            failure=JobErrorInfo(code="timeout", message="x" * 5000),
        )
    record = await store.get(job_id)
    assert record is not None
    assert record.dead_at is None
    assert len(record.history) == HISTORY_MAX
    assert record.history[0].attempt == 6
    assert record.history[-1].attempt == HISTORY_MAX + 5
    assert len(record.history[0].message) == 2000
    assert record.history[0].at.tzinfo is not None
    assert from_micros(0) < record.history[0].at
