"""Submit, read, list and cancel jobs."""

import uuid
from datetime import timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Query, Response
from prometheus_client import Counter

from services.gateway import repository
from services.gateway.deps import Reader, State, Writer
from services.gateway.errors import ApiError
from services.gateway.routes.accounts import check_accounts
from services.gateway.routes.webhooks import check_webhook, webhook_state
from services.gateway.schemas import (
    JobAccepted,
    JobOut,
    JobPage,
    JobTypeOut,
    Links,
    StatusFilter,
    SubmitOptions,
    submit_union,
)
from shared.ids import uuid7
from shared.jobs import REGISTRY, JobStatus
from shared.jobs.contract import ParamsRejected
from shared.jobs.envelope import Envelope, to_micros, utcnow
from shared.jobs.record import JobRecord
from shared.telemetry import inject_context
from shared.text import non_finite_at, nul_at

router = APIRouter(prefix="/v1", tags=["jobs"])

JOBS_ENQUEUED = Counter("tgflow_jobs_enqueued_total", "Jobs accepted for a queue.", ["type"])

SubmitBody = submit_union()


def _not_found(job_id: str) -> ApiError:
    return ApiError(404, "job_not_found", f"No job {job_id} for this tenant.")


def _parse_id(job_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(job_id)
    except ValueError:
        raise _not_found(job_id) from None


def _accepted(record: JobRecord) -> JobAccepted:
    return JobAccepted(
        id=record.id,
        type=record.type,
        status=record.status,
        created_at=record.created_at,
        run_at=record.run_at,
        links=Links(self=f"/v1/jobs/{record.id}"),
    )


async def find_job(state: State, tenant: str, job_id: str) -> JobRecord | None:
    """Live state from Redis, else the Postgres archive."""
    parsed = _parse_id(job_id)
    record = await state.jobs.get(str(parsed))
    if record is not None:
        return record if record.tenant == tenant else None
    return await repository.get_job(state.db, tenant, parsed)


def check_params(body: SubmitOptions, state: State) -> None:
    """Run the job type's own check of its params against this process's settings."""
    validate = REGISTRY[body.type].validate  # type: ignore[attr-defined]
    if validate is None:
        return
    try:
        validate(body.params, state.settings)  # type: ignore[attr-defined]
    except ParamsRejected as exc:
        field = f"params.{exc.field}"
        raise ApiError(
            422, exc.code, exc.message, [{"field": field, "message": exc.message, "type": exc.kind}]
        ) from None


def check_characters(env: Envelope, index: int | None = None) -> None:
    """Refuse params the job's records cannot hold as sent: U+0000 (in params or the
    idempotency key; PostgreSQL keeps it in neither text nor JSON), and what JSON cannot
    carry (integers past 64 bits, lone surrogates, nesting past 254 levels, infinities
    and NaN, which an encoder would write as null)."""
    prefix = "" if index is None else f"jobs.{index}."

    def refuse(code: str, kind: str, field: str, message: str) -> ApiError:
        detail = {"field": prefix + field, "message": message, "type": kind}
        return ApiError(422, code, message, [detail])

    try:
        orjson.dumps(env.params)
    except orjson.JSONEncodeError as exc:
        message = f"The params cannot be stored as JSON ({exc})."
        raise refuse("invalid_params", "unstorable", "params", message) from None
    infinite = non_finite_at(env.params, "params")
    if infinite is not None:
        message = "Numbers must be finite (JSON has no infinity or NaN)."
        raise refuse("invalid_params", "finite_number", infinite, message)
    found = nul_at(env.params, "params")
    if found is None and env.idempotency_key and "\x00" in env.idempotency_key:
        found = "idempotency_key"
    if found is not None:
        message = "Text may not contain the NUL character (U+0000)."
        raise refuse("invalid_character", "invalid_character", found, message)


def envelope_of(body: SubmitOptions, tenant: str, max_defer: int) -> Envelope:
    job_type = REGISTRY[body.type]  # type: ignore[attr-defined]
    now = utcnow()
    run_at = now
    if body.defer_seconds is not None:  # (bounded first: a huge one overflows timedelta)
        run_at = now + timedelta(seconds=min(body.defer_seconds, max_defer + 1))
    elif body.run_at is not None:
        run_at = max(now, body.run_at)
    if run_at - now > timedelta(seconds=max_defer):
        raise ApiError(
            422,
            "defer_too_long",
            f"A job may be scheduled at most {max_defer} seconds ahead.",
            [{"field": "run_at" if body.run_at else "defer_seconds", "message": "too far ahead"}],
        )
    timeout = min(body.timeout_seconds or job_type.timeout, job_type.timeout)
    params: dict[str, Any] = body.params.model_dump(mode="json")  # type: ignore[attr-defined]
    return Envelope(
        id=str(uuid7()),
        type=job_type.name,
        tenant=tenant,
        params=params,
        timeout=timeout,
        created_at=now,
        run_at=run_at,
        idempotency_key=body.idempotency_key,
        trace=inject_context(),
        priority=body.priority,
        webhook_url=body.webhook_url,
    )


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobAccepted,
    summary="Submit a job",
    responses={409: {"description": "Idempotency key reused with other parameters"}},
)
async def submit_job(
    body: Annotated[SubmitBody, Body()],  # type: ignore[valid-type]
    state: State,
    principal: Writer,
    response: Response,
) -> JobAccepted:
    check_params(body, state)
    check_webhook(body, state)
    env = envelope_of(body, principal.tenant, state.settings.max_defer_seconds)
    check_characters(env)
    if env.idempotency_key:  # a replay is answered whatever has changed since (the account)
        [known] = await state.jobs.idempotent_jobs([(env.tenant, env.idempotency_key)])
        if known is not None:
            return await _replayed(state, env, known, response)
    await check_accounts(state, principal.tenant, [env])
    job_id, created = await state.jobs.submit(env)
    if created:
        JOBS_ENQUEUED.labels(env.type).inc()
        return JobAccepted(
            id=env.id,
            type=env.type,
            status=JobStatus.QUEUED,
            created_at=env.created_at,
            run_at=env.run_at,
            links=Links(self=f"/v1/jobs/{env.id}"),
        )
    return await _replayed(state, env, job_id, response)


async def _replayed(state: State, env: Envelope, job_id: str, response: Response) -> JobAccepted:
    existing = await find_job(state, env.tenant, job_id)
    conflict = idempotency_conflict(existing, env)
    if conflict is not None:
        raise conflict
    assert existing is not None
    response.headers["Idempotent-Replayed"] = "true"
    return _accepted(existing)


def idempotency_conflict(existing: JobRecord | None, env: Envelope) -> ApiError | None:
    """The 409 for a submit whose idempotency key names ``existing`` (None when that job
    is no longer known) but which does not repeat it; None for a true replay."""
    if existing is None:
        return ApiError(
            409,
            "idempotency_conflict",
            "This idempotency key belongs to a job that is no longer known; use a new key.",
        )
    if existing.type != env.type or existing.params != env.params:
        return ApiError(
            409,
            "idempotency_conflict",
            "This idempotency key was used for a job with another type or params.",
            {"job_id": existing.id},
        )
    return None


@router.get("/jobs/{job_id}", response_model=JobOut, summary="Get a job")
async def get_job(job_id: str, state: State, principal: Reader) -> JobOut:
    record = await find_job(state, principal.tenant, job_id)
    if record is None:
        raise _not_found(job_id)
    return JobOut.of(record, await webhook_state(state, record))


@router.get("/jobs", response_model=JobPage, summary="List jobs, newest first")
async def list_jobs(
    state: State,
    principal: Reader,
    status: StatusFilter | None = None,
    type: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> JobPage:
    try:
        position = repository.decode_cursor(cursor) if cursor else None
    except repository.InvalidCursor:
        raise ApiError(400, "invalid_cursor", "The cursor is not one this API returned.") from None
    records = await repository.list_jobs(
        state.db, principal.tenant, status=status, job_type=type, limit=limit, cursor=position
    )
    live = await _overlay_live(state, records)
    if status is not None:  # a job may have moved on since the archive last saw it
        live = [r for r in live if r.status == status]
    next_cursor = None
    if len(records) == limit:
        last = records[-1]
        next_cursor = repository.encode_cursor(last.created_at, last.id)
    return JobPage(items=[JobOut.of(r) for r in live], next_cursor=next_cursor)


async def _overlay_live(state: State, records: list[JobRecord]) -> list[JobRecord]:
    """The archive trails Redis by milliseconds; show unfinished jobs as they are now."""
    pending = [i for i, r in enumerate(records) if not r.status.is_terminal]
    if not pending:
        return records
    fresh = list(records)
    lives = await state.jobs.get_many([records[i].id for i in pending])
    for i, live in zip(pending, lives, strict=True):
        if live is not None and live.seq >= records[i].seq:
            fresh[i] = live
    return fresh


@router.delete("/jobs/{job_id}", response_model=JobOut, summary="Cancel a job")
async def cancel_job(job_id: str, state: State, principal: Writer, response: Response) -> JobOut:
    record = await find_job(state, principal.tenant, job_id)
    if record is None:
        raise _not_found(job_id)
    if record.status.is_terminal:
        raise ApiError(
            409,
            "job_finished",
            f"The job already finished as {record.status}.",
            {"status": record.status},
        )
    outcome = await state.jobs.cancel(record, to_micros(utcnow()))
    if outcome in ("succeeded", "failed", "missing"):
        raise ApiError(409, "job_finished", "The job finished before it could be cancelled.")
    if outcome == "cancelling":
        response.status_code = 202
    fresh = await state.jobs.get(record.id) or record
    return JobOut.of(fresh, await webhook_state(state, fresh))


@router.get("/job-types", response_model=list[JobTypeOut], summary="The job catalogue")
async def job_types(principal: Reader) -> list[JobTypeOut]:
    return [
        JobTypeOut(
            name=jt.name,
            queue=jt.queue.value,
            summary=jt.summary,
            timeout_seconds=jt.timeout,
            max_tries=jt.retry.max_tries,
            params_schema=jt.params.model_json_schema(),
            result_schema=jt.result.model_json_schema(),
        )
        for jt in sorted(REGISTRY.values(), key=lambda jt: jt.name)
    ]
