"""Job metrics, labelled by job type."""

from __future__ import annotations

import asyncio

from prometheus_client import Counter, Gauge, Histogram
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.aio import raise_if_cancelling, sleep_unless
from shared.jobs import QueueKind
from shared.jobs.routing import all_queues
from shared.queue import ARCHIVE_STREAM

_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

JOBS_STARTED = Counter("tgflow_jobs_started_total", "Job runs started.", ["type"])
JOBS_SUCCEEDED = Counter("tgflow_jobs_succeeded_total", "Jobs that succeeded.", ["type"])
JOBS_FAILED = Counter("tgflow_jobs_failed_total", "Jobs that failed for good.", ["type", "code"])
JOBS_DEAD_LETTERED = Counter(
    "tgflow_jobs_dead_lettered_total",
    "Jobs that failed for good and went to the dead letters.",
    ["type", "code"],
)
JOBS_RETRIED = Counter("tgflow_jobs_retried_total", "Job runs scheduled again.", ["type", "code"])
JOBS_DEFERRED = Counter(
    "tgflow_jobs_deferred_total", "Job runs put off until a later time.", ["type", "code"]
)
JOBS_CANCELLED = Counter("tgflow_jobs_cancelled_total", "Jobs cancelled while running.", ["type"])
JOBS_REQUEUED = Counter(
    "tgflow_jobs_requeued_total", "Running jobs handed back on shutdown.", ["type"]
)
JOB_DURATION = Histogram(
    "tgflow_job_duration_seconds", "Time a job run took.", ["type"], buckets=_BUCKETS
)
JOB_QUEUE_WAIT = Histogram(
    "tgflow_job_queue_wait_seconds",
    "From due time to start of the run.",
    ["type"],
    buckets=_BUCKETS,
)
JOBS_RUNNING = Gauge("tgflow_jobs_running", "Jobs running in this worker.", ["queue"])
QUEUE_DEPTH = Gauge("tgflow_queue_depth", "Jobs waiting or running in a queue.", ["queue"])
ARCHIVE_BACKLOG = Gauge("tgflow_archive_backlog", "Job changes not yet copied to Postgres.")
SHARDS_HELD = Gauge("tgflow_worker_shards_held", "Telegram shards whose lease this worker holds.")
SHARD_CHANGES = Counter(
    "tgflow_shard_changes_total", "Shard leases acquired, handed off or fenced off.", ["change"]
)
ARCHIVED = Counter("tgflow_archive_rows_total", "Job changes copied to Postgres.")
ARCHIVE_REJECTED = Counter(
    "tgflow_archive_rejected_total",
    "Job changes Postgres refused, set aside in the tgflow:archive:rejected stream.",
)


async def sample_queues(
    redis: Redis, queues: list[str], shards: int, stop: asyncio.Event, interval: float
) -> None:
    """Refresh the queue depth and archive backlog gauges until ``stop`` is set."""
    keys = {name: all_queues(QueueKind(name), shards) for name in queues}
    while not stop.is_set():
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for name in queues:
                    for key in keys[name]:
                        pipe.zcard(key)
                pipe.xlen(ARCHIVE_STREAM)
                *depths, backlog = await pipe.execute()
            at = 0
            for name in queues:
                QUEUE_DEPTH.labels(name).set(sum(depths[at : at + len(keys[name])]))
                at += len(keys[name])
            ARCHIVE_BACKLOG.set(backlog)
        except (RedisError, OSError):
            raise_if_cancelling()
        if await sleep_unless(stop, interval):
            return
