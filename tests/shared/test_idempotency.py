"""How long an idempotency key answers for its job: while the job waits or runs,
however long that is, and for the key's TTL after the job ends."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from redis.asyncio import Redis

from shared.jobs import QueueKind, queue_key
from shared.jobs.envelope import Envelope, to_micros, utcnow
from shared.queue import JobStore, idempotency_key
from tests.helpers import echo_envelope

QUEUE = queue_key(QueueKind.CONTROL)
KEY = "invoice-42"


def _env(defer: float = 0.0) -> Envelope:
    return echo_envelope(defer, idempotency_key=KEY)


async def test_a_key_outlives_its_jobs_wait_and_run_then_lasts_its_ttl(redis: Redis) -> None:
    store = JobStore(redis, status_ttl=600, idempotency_ttl=1, shards=4)  # a 1 s TTL
    job_id, created = await store.submit(_env(defer=2.0))
    assert created
    await asyncio.sleep(1.3)  # past the TTL, before the job is due
    assert await store.submit(_env()) == (job_id, False)
    await asyncio.sleep(0.8)  # due now
    now_us = to_micros(utcnow())
    claim = await store.claim(job_id, QUEUE, lease_ms=60_000, worker="w", now_us=now_us)
    assert claim is not None
    assert claim.started
    # A flood wait defers it far beyond the TTL (as a Telegram job's would).
    later = str(to_micros(utcnow() + timedelta(days=40)))
    changed, _ = await store.transition(
        job_id, {"status": "queued", "run_at": later}, allowed_from=("running",)
    )
    assert changed
    await asyncio.sleep(1.2)
    assert await store.submit(_env()) == (job_id, False)
    await store.transition(
        job_id, {"status": "succeeded", "result": "{}"}, allowed_from=("queued",), final=True
    )
    assert await store.submit(_env()) == (job_id, False)  # the TTL runs from the end
    await asyncio.sleep(1.2)
    again, created = await store.submit(_env())  # now the key is free for a new job
    assert created
    assert again != job_id


async def test_a_key_is_kept_through_a_requeue_and_given_its_ttl_at_a_cancel(
    store: JobStore, redis: Redis
) -> None:
    key = idempotency_key("acme", KEY)
    job_id, _ = await store.submit(_env(defer=3600))
    assert 600 + 3590 < await redis.ttl(key) <= 600 + 3600  # the delay, then the TTL
    now = str(to_micros(utcnow()))
    await store.transition(job_id, {"status": "running"}, allowed_from=("queued",))
    assert await redis.ttl(key) == -1  # kept while the job runs
    await store.transition(
        job_id, {"status": "failed", "finished_at": now}, allowed_from=("running",), final=True
    )
    assert 590 < await redis.ttl(key) <= 600
    await redis.delete(f"arq:in-progress:{job_id}")
    record = await store.get(job_id)
    assert record is not None
    assert await store.requeue(record, _env().model_copy(update={"id": job_id})) == "requeued"
    assert await redis.ttl(key) == -1  # queued again: kept again
    assert await store.cancel(record, to_micros(utcnow())) == "cancelled"
    assert 590 < await redis.ttl(key) <= 600
