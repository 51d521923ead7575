"""Submit up to 1,000 jobs in one request, in one Redis round trip."""

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from services.gateway.deps import State, Writer
from services.gateway.routes.accounts import check_accounts
from services.gateway.routes.jobs import (
    JOBS_ENQUEUED,
    SubmitBody,
    check_characters,
    check_params,
    envelope_of,
    find_job,
    idempotency_conflict,
)
from services.gateway.routes.webhooks import check_webhook
from services.gateway.schemas import Links
from shared.jobs.envelope import Envelope

router = APIRouter(prefix="/v1", tags=["jobs"])

MAX_BATCH = 1000


class BatchRequest(BaseModel):
    jobs: list[SubmitBody] = Field(min_length=1, max_length=MAX_BATCH)


class BatchItem(BaseModel):
    index: int
    id: str | None = None
    status: str | None = None
    replayed: bool = False
    links: Links | None = None
    error: dict[str, Any] | None = None


class BatchAccepted(BaseModel):
    accepted: int
    replayed: int
    rejected: int
    items: list[BatchItem]


@router.post(
    "/jobs:batch",
    status_code=202,
    response_model=BatchAccepted,
    summary="Submit up to 1,000 jobs at once",
)
async def submit_batch(body: BatchRequest, state: State, principal: Writer) -> BatchAccepted:
    """Validated as a whole (any invalid job rejects the batch with its index), then
    enqueued in one pipeline; each job keeps its own idempotency key."""
    for index, job in enumerate(body.jobs):
        check_params(job, state)
        check_webhook(job, state, index)
    envs = [
        envelope_of(job, principal.tenant, state.settings.max_defer_seconds) for job in body.jobs
    ]
    for index, env in enumerate(envs):
        check_characters(env, index)
    # Replays are answered whatever has changed since (the account): not checked again.
    answered = {
        index: await _replay(state, index, envs[index], job_id)
        for index, job_id in await _known(state, envs)
    }
    await check_accounts(state, principal.tenant, envs, skip=answered)
    fresh = [index for index in range(len(envs)) if index not in answered]
    results = await state.jobs.submit_many([envs[index] for index in fresh])
    for index, (job_id, created) in zip(fresh, results, strict=True):
        env = envs[index]
        if created:
            JOBS_ENQUEUED.labels(env.type).inc()
            answered[index] = _item(index, job_id, "queued")
        else:
            answered[index] = await _replay(state, index, env, job_id)
    items = [answered[index] for index in range(len(envs))]
    return BatchAccepted(
        accepted=sum(1 for i in items if i.error is None and not i.replayed),
        replayed=sum(1 for i in items if i.replayed),
        rejected=sum(1 for i in items if i.error is not None),
        items=items,
    )


def _item(index: int, job_id: str, status: str, *, replayed: bool = False) -> BatchItem:
    links = Links(self=f"/v1/jobs/{job_id}")
    return BatchItem(index=index, id=job_id, status=status, replayed=replayed, links=links)


async def _known(state: State, envs: list[Envelope]) -> list[tuple[int, str]]:
    """(index, job id) of each job whose idempotency key names a job already: one round
    trip, and none when no job has a key."""
    keyed = [
        (i, (env.tenant, env.idempotency_key)) for i, env in enumerate(envs) if env.idempotency_key
    ]
    found = await state.jobs.idempotent_jobs([key for _, key in keyed])
    return [(i, job_id) for (i, _), job_id in zip(keyed, found, strict=True) if job_id]


async def _replay(state: State, index: int, env: Envelope, job_id: str) -> BatchItem:
    existing = await find_job(state, env.tenant, job_id)
    conflict = idempotency_conflict(existing, env)
    if conflict is not None:
        error = {"code": conflict.code, "message": conflict.message}
        if conflict.details is not None:
            error["details"] = conflict.details
        return BatchItem(index=index, error=error)
    assert existing is not None
    return _item(index, existing.id, existing.status.value, replayed=True)
