"""A test-only job type that fails on demand until it is mended, for dead-letter tests.

The production catalogue has no job type whose purpose is to fail, and should not: a
type registered for the length of one test (as ``test.flaky`` in test_runner) is enough,
and the in-process worker serves it like any other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from arq.constants import job_key_prefix
from pydantic import BaseModel
from redis.asyncio import Redis

from services.worker.archiver import Archiver
from services.worker.context import JobContext
from services.worker.tasks import HANDLERS
from shared.config import BaseAppSettings
from shared.db import create_pool
from shared.errors import Deferral, PermanentFailure, RetryableFailure
from shared.ids import uuid7
from shared.jobs import REGISTRY, JobType, QueueKind, RetryPolicy, queue_key
from shared.jobs.envelope import Envelope, to_micros, utcnow
from shared.jobs.record import JobErrorInfo
from shared.jobs.routing import Priority
from shared.queue import JobStore

NAME = "test.breakable"
MAX_TRIES = 3


class BreakableParams(BaseModel):
    fail: Literal["retryable", "permanent"] = "retryable"
    code: str = "server_error"
    defer_first: bool = False  # a flood-wait-like deferral before the first real try
    defer_seconds: float = 0.1


class BreakableResult(BaseModel):
    attempt: int


@dataclass
class Switch:
    """``mended`` makes every run succeed; ``runs`` records (job id, attempt)."""

    mended: bool = False
    runs: list[tuple[str, int]] = field(default_factory=list)


SWITCH = Switch()


async def breakable(ctx: JobContext, params: BreakableParams) -> BreakableResult:
    first = all(job_id != ctx.job_id for job_id, _ in SWITCH.runs)
    SWITCH.runs.append((ctx.job_id, ctx.attempt))
    if params.defer_first and first:
        until = utcnow() + timedelta(seconds=params.defer_seconds)
        raise Deferral("flood_wait", "Wait a moment.", until)
    if SWITCH.mended:
        return BreakableResult(attempt=ctx.attempt)
    message = f"attempt {ctx.attempt} broke"
    if params.fail == "permanent":
        raise PermanentFailure(params.code, message)
    raise RetryableFailure(params.code, message)


@contextlib.contextmanager
def registered() -> Iterator[Switch]:
    """Register ``test.breakable`` (fast retries, three tries) for the block."""
    REGISTRY[NAME] = JobType(
        name=NAME,
        params=BreakableParams,
        result=BreakableResult,
        queue=QueueKind.CONTROL,
        timeout=5,
        summary="Fails until mended.",
        retry=RetryPolicy(max_tries=MAX_TRIES, base_seconds=0.02, cap_seconds=0.05),
    )
    HANDLERS[NAME] = breakable
    SWITCH.mended = False
    SWITCH.runs.clear()
    try:
        yield SWITCH
    finally:
        del REGISTRY[NAME]
        del HANDLERS[NAME]


@contextlib.contextmanager
def _declared(name: str) -> Iterator[None]:
    REGISTRY[name] = JobType(
        name=name,
        params=BreakableParams,
        result=BreakableResult,
        queue=QueueKind.CONTROL,
        timeout=5,
        summary="A type that is gone.",
    )
    try:
        yield
    finally:
        del REGISTRY[name]


async def submit(
    store: JobStore,
    tenant: str = "acme",
    params: dict[str, Any] | None = None,
    job_type: str = NAME,
    priority: Priority = Priority.NORMAL,
) -> str:
    """Enqueue through the job store: the gateway's submit schema is fixed at import.

    A ``job_type`` outside the catalogue is declared just for the submit (on the control
    queue), as a job of a type a later release dropped would have been.
    """
    if job_type not in REGISTRY:
        with _declared(job_type):
            return await submit(store, tenant, params, job_type, priority)
    now = utcnow()
    env = Envelope(
        id=str(uuid7()),
        type=job_type,
        tenant=tenant,
        params=params or {},
        timeout=5,
        created_at=now,
        run_at=now,
        priority=priority,
    )
    await store.submit(env)
    return env.id


async def fail_in_store(store: JobStore, job_id: str, code: str = "server_error") -> None:
    """Fail a queued job for good as a worker would, without running one: start it,
    fail it, and clear its ARQ entries as ARQ does after the run."""
    now = str(to_micros(utcnow()))
    await store.transition(
        job_id,
        {"status": "running", "attempts": "1", "started_at": now},
        allowed_from=("queued",),
    )
    error = JobErrorInfo(code=code, message=f"{code} happened")
    await store.transition(
        job_id,
        {"status": "failed", "error": error.model_dump_json(), "finished_at": now},
        allowed_from=("running",),
        final=True,
    )
    await store.redis.zrem(queue_key(QueueKind.CONTROL), job_id)
    await store.redis.delete(job_key_prefix + job_id)


async def archive_all(redis: Redis) -> None:
    """Copy everything in the archive stream to Postgres now (what workers do)."""
    pool = await create_pool(BaseAppSettings(), role="test")
    try:
        archiver = Archiver(redis, pool, "test-archiver")
        await archiver.ensure_group()
        await archiver.drain()
    finally:
        await pool.close()
