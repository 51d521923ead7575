"""The claim begins a run: it counts the try, reads the job and takes its abort mark."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from shared.ids import uuid7
from shared.jobs import QueueKind, queue_key
from shared.jobs.envelope import Envelope, to_micros, utcnow
from shared.queue import JobStore, job_key
from tests.helpers import eventually, gateway_client, running_worker, wait_for_status

QUEUE = queue_key(QueueKind.CONTROL)


async def _submit(store: JobStore, message: str = "hi") -> str:
    now = utcnow()
    env = Envelope(
        id=str(uuid7()),
        type="system.echo",
        tenant="acme",
        params={"message": message},
        timeout=5,
        created_at=now,
        run_at=now,
    )
    await store.submit(env)
    return env.id


async def _claim(store: JobStore, job_id: str, lease_ms: int = 60_000) -> Any:
    return await store.claim(
        job_id, QUEUE, lease_ms=lease_ms, worker="elsewhere", now_us=to_micros(utcnow())
    )


async def test_a_claim_counts_the_try_reads_the_job_and_refuses_a_second_taker(
    store: JobStore, redis: Redis
) -> None:
    job_id = await _submit(store)
    claim = await _claim(store, job_id, lease_ms=200)
    assert claim.started
    assert not claim.aborted
    assert claim.tries == 1
    assert claim.payload is not None
    assert b"system.echo" in claim.payload
    assert await _claim(store, job_id) is None  # leased to the first taker
    record = await redis.hgetall(job_key(job_id))
    assert (record["status"], record["attempts"], record["worker"]) == ("running", "1", "elsewhere")
    await eventually(lambda: _gone(redis, f"arq:in-progress:{job_id}"), timeout=5)
    again = await _claim(store, job_id)  # the lease lapsed: the next run is try 2
    assert again.tries == 2
    assert (await redis.hgetall(job_key(job_id)))["attempts"] == "2"


async def _gone(redis: Redis, key: str) -> bool:
    return not await redis.exists(key)


async def test_cancelled_while_a_dead_worker_held_it_ends_cancelled_and_never_runs(
    store: JobStore, redis: Redis
) -> None:
    """Cancelling a job whose worker is gone leaves an abort mark; the next claim takes
    it, and the job is recorded cancelled instead of being run."""
    job_id = await _submit(store)
    assert (await _claim(store, job_id, lease_ms=300)).started  # its worker then dies
    record = await store.get(job_id)
    assert record is not None
    assert await store.cancel(record, to_micros(utcnow())) == "cancelling"
    await eventually(lambda: _gone(redis, f"arq:in-progress:{job_id}"), timeout=5)
    async with gateway_client() as client, running_worker(worker_poll_delay=0.05):
        job = await wait_for_status(client, job_id, {"cancelled", "succeeded"}, timeout=10)
    assert job["status"] == "cancelled"
    assert job["result"] is None
    assert not await redis.exists(f"arq:job:{job_id}", f"arq:retry:{job_id}")
    assert await redis.zscore(QUEUE, job_id) is None


async def test_a_job_whose_definition_expired_fails_as_not_runnable(
    store: JobStore, redis: Redis
) -> None:
    job_id = await _submit(store)
    await redis.delete(f"arq:job:{job_id}")
    async with gateway_client() as client, running_worker(worker_poll_delay=0.05):
        job = await wait_for_status(client, job_id, {"failed", "succeeded"}, timeout=10)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "not_runnable"
    assert await redis.zscore(QUEUE, job_id) is None
