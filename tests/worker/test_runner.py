"""Outcomes of a job run: retries with backoff, permanent failures, leases."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.constants import retry_key_prefix
from pydantic import BaseModel
from redis.asyncio import Redis

from services.worker import consumer
from services.worker.context import JobContext
from services.worker.outcomes import backoff_seconds
from services.worker.tasks import HANDLERS
from shared.aio import outlast_cancellation
from shared.config import BaseAppSettings
from shared.errors import Deferral, PermanentFailure, RetryableFailure
from shared.ids import uuid7
from shared.jobs import REGISTRY, JobType, QueueKind, RetryPolicy, queue_key
from shared.jobs.envelope import Envelope, utcnow
from shared.queue import JobStore, job_key
from shared.redis_client import create_redis
from tests import breakable
from tests.helpers import auth, eventually, gateway_client, running_worker, wait_for_status


class FlakyParams(BaseModel):
    fail_times: int = 0
    permanent: bool = False
    defer_times: int = 0
    linger: float = 0.0  # seconds each run takes, its own timeout notwithstanding
    outlast: float = 0.0  # seconds of a step that outlasts cancels (a send on the wire)


class FlakyResult(BaseModel):
    attempt: int


RUNS: list[int] = []


async def flaky(ctx: JobContext, params: FlakyParams) -> FlakyResult:
    RUNS.append(ctx.attempt)
    if params.outlast:  # as tasks.telegram.send_once: a cancel waits, then takes effect
        step = asyncio.ensure_future(asyncio.sleep(params.outlast))
        if await outlast_cancellation(step):
            ctx.in_doubt.update(maybe_sent=True)
            raise asyncio.CancelledError
    if params.linger:
        try:
            await asyncio.sleep(params.linger)
        except asyncio.CancelledError:  # its own timeout: it goes on, as a stuck call may
            await asyncio.sleep(params.linger)
    if len(RUNS) <= params.defer_times:
        until = utcnow() + timedelta(seconds=0.2)
        raise Deferral("flood_wait", "Wait a moment.", until)
    if params.permanent:
        raise PermanentFailure("bad_peer", "That peer does not exist.")
    if ctx.attempt <= params.fail_times:
        raise RetryableFailure("server_error", f"attempt {ctx.attempt} failed")
    return FlakyResult(attempt=ctx.attempt)


@pytest.fixture
def flaky_type() -> Iterator[None]:
    """A test-only job type with a fast retry policy, registered for one test."""
    REGISTRY["test.flaky"] = JobType(
        name="test.flaky",
        params=FlakyParams,
        result=FlakyResult,
        queue=QueueKind.CONTROL,
        timeout=1,
        summary="Fails on demand.",
        retry=RetryPolicy(max_tries=3, base_seconds=0.05, cap_seconds=0.1),
    )
    HANDLERS["test.flaky"] = flaky
    RUNS.clear()
    yield
    del REGISTRY["test.flaky"]
    del HANDLERS["test.flaky"]


async def _submit_flaky(store: JobStore, params: dict[str, Any]) -> str:
    """Submit through the job store: the gateway's body schema is fixed at import."""
    now = utcnow()
    env = Envelope(
        id=str(uuid7()),
        type="test.flaky",
        tenant="acme",
        params=params,
        timeout=1,
        created_at=now,
        run_at=now,
    )
    await store.submit(env)
    return env.id


async def _run_flaky(params: dict[str, Any], **worker: Any) -> dict[str, Any]:
    redis = create_redis(BaseAppSettings())
    store = JobStore(redis, status_ttl=600, idempotency_ttl=600, shards=4)
    job_id = await _submit_flaky(store, params)
    try:
        async with gateway_client() as client, running_worker(worker_poll_delay=0.05, **worker):
            return await wait_for_status(client, job_id, {"succeeded", "failed"}, timeout=10)
    finally:
        await redis.aclose()


async def test_retryable_failure_is_retried_until_success(flaky_type: None) -> None:
    job = await _run_flaky({"fail_times": 2})
    assert job["status"] == "succeeded"
    assert job["result"] == {"attempt": 3}
    assert RUNS == [1, 2, 3]


async def test_retries_stop_at_max_tries(flaky_type: None) -> None:
    job = await _run_flaky({"fail_times": 10})
    assert job["status"] == "failed"
    assert job["error"]["code"] == "server_error"
    assert RUNS == [1, 2, 3]


async def test_permanent_failure_is_not_retried(flaky_type: None) -> None:
    job = await _run_flaky({"permanent": True})
    assert job["status"] == "failed"
    assert job["error"] == {
        "code": "bad_peer",
        "message": "That peer does not exist.",
        "details": None,
    }
    assert RUNS == [1]


async def test_deferral_waits_without_spending_a_try(flaky_type: None) -> None:
    job = await _run_flaky({"defer_times": 5})
    assert job["status"] == "succeeded"
    assert RUNS == [1, 1, 1, 1, 1, 1]  # five waits, then the first real try
    assert job["result"] == {"attempt": 1}
    assert job["error"] is None


async def test_a_cancel_while_a_deferral_is_recorded_ends_the_job_cancelled(
    switch: breakable.Switch, store: JobStore, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run has recorded a deferral (the job is queued again) but not yet ended, held
    there by a slow Redis round trip, when a cancel comes: the job ends cancelled, never
    queued with no queue entry to run it."""
    real_decr = ArqRedis.decr

    async def slow_decr(self: ArqRedis, name: Any, *args: Any, **kwargs: Any) -> Any:
        if str(name).startswith(retry_key_prefix):  # the deferral giving its try back
            await asyncio.sleep(0.5)
        return await real_decr(self, name, *args, **kwargs)

    monkeypatch.setattr(ArqRedis, "decr", slow_decr)
    job_id = await breakable.submit(store, params={"defer_first": True, "defer_seconds": 30})
    async with gateway_client() as client, running_worker(worker_poll_delay=0.05):

        async def deferring() -> bool:
            job = (await client.get(f"/v1/jobs/{job_id}", headers=auth())).json()
            return bool(job["status"] == "queued" and job["error"])

        await eventually(deferring, interval=0.005)
        response = await client.delete(f"/v1/jobs/{job_id}", headers=auth())
        assert response.status_code == 202  # the run had not ended: its worker was asked
        job = await wait_for_status(client, job_id, {"cancelled"}, timeout=3)
    assert job["error"]["code"] == "cancelled"
    assert await redis.zscore(queue_key(QueueKind.CONTROL), job_id) is None
    assert switch.runs == [(job_id, 1)]


async def test_a_cancel_outlasted_by_a_step_survives_the_jobs_own_timeout(
    flaky_type: None, store: JobStore
) -> None:
    """A step that outlasts cancels (a send on the wire) is under way when the job is
    cancelled, and the job's own timeout comes too: the job ends cancelled, saying what
    the step left in doubt, instead of being retried as a timeout (and sending again)."""
    job_id = await _submit_flaky(store, {"outlast": 2})
    async with gateway_client() as client, running_worker(worker_poll_delay=0.05):
        await wait_for_status(client, job_id, {"running"})
        response = await client.delete(f"/v1/jobs/{job_id}", headers=auth())
        assert response.status_code == 202
        job = await wait_for_status(client, job_id, {"succeeded", "failed", "cancelled"})
        await asyncio.sleep(0.5)  # no run comes after it
    assert job["status"] == "cancelled", job
    assert job["error"]["details"] == {"maybe_sent": True}
    assert RUNS == [1]


async def test_a_job_whose_cancel_was_asked_never_starts_another_run(
    flaky_type: None, store: JobStore, redis: Redis
) -> None:
    """A run asked to cancel went back to its queue without ending the job (its abort
    mark taken already): the next claim ends it cancelled instead of running it."""
    job_id = await _submit_flaky(store, {})
    await redis.hset(job_key(job_id), "cancel_requested", "1")
    async with gateway_client() as client, running_worker(worker_poll_delay=0.05):
        job = await wait_for_status(client, job_id, {"succeeded", "failed", "cancelled"})
    assert job["status"] == "cancelled", job
    assert RUNS == []


async def test_a_run_past_the_backstop_timeout_is_a_timeout_not_a_hand_back(
    flaky_type: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that outlives its own timeout meets ARQ's backstop (here 0.3 s later, and
    before the drain's grace is up): each such run is recorded as a timed-out try, and
    the job fails when they are spent, instead of being left queued outside its queue."""
    monkeypatch.setattr(consumer, "BACKSTOP_MARGIN_S", 0.3)
    job = await _run_flaky({"linger": 5}, worker_drain_seconds=1)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "timeout"
    assert RUNS == [1, 2, 3]


def test_backoff_is_capped_full_jitter() -> None:
    policy = RetryPolicy(max_tries=10, base_seconds=1, cap_seconds=8)
    samples = [backoff_seconds(policy, attempt) for attempt in range(1, 10) for _ in range(50)]
    assert all(0 <= s <= 8 for s in samples)
    assert max(backoff_seconds(policy, 1) for _ in range(200)) <= 1
    assert max(samples) > 4  # later attempts really do wait longer


async def test_lease_is_renewed_so_a_long_job_runs_once(redis: Any) -> None:
    """With a 2 s lease, a 3 s job must not be picked up again by a second worker."""
    async with (
        gateway_client() as client,
        running_worker(job_lease_seconds=2),
        running_worker(job_lease_seconds=2),
    ):
        response = await client.post(
            "/v1/jobs", json={"type": "system.sleep", "params": {"seconds": 3}}, headers=auth()
        )
        job_id = response.json()["id"]
        await wait_for_status(client, job_id, {"running"})
        ttl = await redis.pttl(f"arq:in-progress:{job_id}")
        assert 0 < ttl <= 2000
        job = await wait_for_status(client, job_id, {"succeeded"}, timeout=10)
    assert job["attempts"] == 1


async def test_many_jobs_all_finish(redis: Any) -> None:
    async with gateway_client() as client, running_worker(worker_concurrency=20):
        ids = [
            (
                await client.post(
                    "/v1/jobs",
                    json={"type": "system.echo", "params": {"message": str(i)}},
                    headers=auth(),
                )
            ).json()["id"]
            for i in range(200)
        ]
        done = await asyncio.gather(*(wait_for_status(client, i, {"succeeded"}) for i in ids))
    assert [d["result"]["message"] for d in done] == [str(i) for i in range(200)]


async def test_worker_metrics_count_jobs_and_queue_depth(redis: Any) -> None:
    import httpx

    from shared import registry

    async with gateway_client() as client, running_worker(heartbeat_seconds=0.2):
        job_id = (
            await client.post("/v1/jobs", json={"type": "system.echo"}, headers=auth())
        ).json()["id"]
        await wait_for_status(client, job_id, {"succeeded"})
        await client.post(
            "/v1/jobs", json={"type": "system.echo", "defer_seconds": 60}, headers=auth()
        )
        worker = (await registry.live_instances(redis, "worker"))[0]
        async with httpx.AsyncClient() as http:

            async def scraped() -> str | None:
                text = (await http.get(worker["metrics_url"])).text
                return text if 'tgflow_queue_depth{queue="control"} 1.0' in text else None

            text = await eventually(scraped, timeout=5)
    assert 'tgflow_jobs_succeeded_total{type="system.echo"}' in text
    assert "tgflow_job_duration_seconds_bucket" in text
    assert "tgflow_archive_backlog" in text
