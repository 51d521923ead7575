"""Parent jobs whose steps are child jobs: submitted once, awaited without blocking a worker.

A parent calls ``await chain.step(name, job_type, params)`` for each step, in order,
from the start on every run. The first call submits the child with an id derived from
the parent's id and the step name (and an idempotency key), so a re-run never submits
it twice; later calls find it. A finished child's result is returned; a failed one
fails the parent with ``step_failed``; an unfinished one is waited for inside the
worker for a few seconds and then the parent is deferred (back to the queue, no try
spent) and re-run later, passing quickly over the steps already done.

The steps so far are kept on the parent's job record as ``progress``
(``{"steps": [{name, type, job_id, status, attempts}]}``) and belong in its result.
Children are ordinary jobs of the same tenant, readable at GET /v1/jobs/{id}, in the
parent's trace.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import timedelta
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel

from services.worker.context import JobContext
from shared.errors import Deferral, PermanentFailure
from shared.jobs.ai import StepOut
from shared.jobs.contract import JobStatus, JobType
from shared.jobs.envelope import Envelope, utcnow
from shared.jobs.record import JobRecord
from shared.telemetry import inject_context

R = TypeVar("R", bound=BaseModel)

# Fixed namespace for child ids: uuid5(namespace, "<parent id>/<step name>").
CHILD_NAMESPACE = uuid.UUID("6f1c1f0e-5d8a-4b59-9a55-1c2b7f3e9d41")
WAIT_SECONDS = 5.0  # per run, waiting for children inside the worker before deferring

_ARCHIVED = """
SELECT id, tenant_id, type, queue, status, params, attempts, result, error_code,
       error_message, idempotency_key, trace_id, seq, created_at, run_at, started_at,
       finished_at
FROM jobs WHERE id = $1 AND tenant_id = $2
"""


def child_id(parent_id: str, step: str) -> str:
    """The id of a parent's step: the same on every run of the parent."""
    return str(uuid.uuid5(CHILD_NAMESPACE, f"{parent_id}/{step}"))


class Chain:
    """The steps of one run of a parent job."""

    def __init__(self, ctx: JobContext, wait_seconds: float | None = None) -> None:
        self.ctx = ctx
        self.steps: list[StepOut] = []
        wait = WAIT_SECONDS if wait_seconds is None else wait_seconds
        self.deadline = asyncio.get_running_loop().time() + wait

    async def step(self, name: str, job_type: JobType[Any, R], params: BaseModel) -> R:
        """The child's result, once it has one; see the module docstring."""
        job_id = child_id(self.ctx.job_id, name)
        record = await self._find(job_id)
        if record is None:
            await self._submit(job_id, name, job_type, params)
            record = await self._find(job_id)
        record = await self._wait(job_id, record)
        await self._note(name, job_type, job_id, record)
        if record is not None and record.status is JobStatus.SUCCEEDED:
            return job_type.result.model_validate(record.result)
        if record is not None and record.status.is_terminal:
            error = record.error
            why = f"{error.code}: {error.message}" if error else record.status.value
            raise PermanentFailure(
                "step_failed", f"Step {name} ({job_type.name} job {job_id}) ended: {why}"
            )
        delay = random.uniform(0.3, 0.7)
        raise Deferral(
            "waiting_for_step",
            f"Waiting for step {name} ({job_type.name} job {job_id}).",
            utcnow() + timedelta(seconds=delay),
        )

    async def _find(self, job_id: str) -> JobRecord | None:
        """Live state from Redis, else the archive (a child finished long ago)."""
        record = await self.ctx.state.jobs.get(job_id)
        if record is not None:
            return record
        row = await self.ctx.state.db.fetchrow(_ARCHIVED, uuid.UUID(job_id), self.ctx.tenant)
        return JobRecord.from_row(dict(row.items())) if row is not None else None

    async def _submit(
        self, job_id: str, name: str, job_type: JobType[Any, Any], params: BaseModel
    ) -> None:
        now = utcnow()
        env = Envelope(
            id=job_id,
            type=job_type.name,
            tenant=self.ctx.tenant,
            params=params.model_dump(mode="json"),
            timeout=job_type.timeout,
            created_at=now,
            run_at=now,
            idempotency_key=f"parent:{self.ctx.job_id}:{name}",
            trace=inject_context(),
        )
        await self.ctx.state.jobs.submit(env)

    async def _wait(self, job_id: str, record: JobRecord | None) -> JobRecord | None:
        """Poll the child until it finishes or this run's waiting time is up."""
        loop = asyncio.get_running_loop()
        pause = 0.005
        while (record is None or not record.status.is_terminal) and loop.time() < self.deadline:
            await asyncio.sleep(min(pause, max(0.0, self.deadline - loop.time())))
            pause = min(pause * 2, 0.1)
            record = await self.ctx.state.jobs.get(job_id)
        return record

    async def _note(
        self, name: str, job_type: JobType[Any, Any], job_id: str, record: JobRecord | None
    ) -> None:
        self.steps.append(
            StepOut(
                name=name,
                type=job_type.name,
                job_id=job_id,
                status=record.status.value if record else "queued",
                attempts=record.attempts if record else 0,
            )
        )
        steps = [s.model_dump() for s in self.steps]
        # Now, not with the next transition: the steps must show while the parent waits.
        await self.ctx.report(progress=orjson.dumps({"steps": steps}).decode())
