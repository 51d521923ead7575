"""Dead letters: jobs that failed for good, listed and put back on their queue.

The archive in Postgres is the list; it trails Redis by the archiver's batch interval, so
a page also looks at the live hashes of the last few minutes' dead letters (to show a job
that failed a moment ago, and to hide one requeued a moment ago).
"""

import asyncio
import time
import uuid
from datetime import datetime, timedelta
from typing import Annotated, Self

from fastapi import APIRouter, Query
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.gateway import repository
from services.gateway.deps import Reader, State, Writer
from services.gateway.errors import ApiError
from services.gateway.routes.accounts import check_accounts
from services.gateway.routes.jobs import find_job
from services.gateway.schemas import JobOut, JobPage, QueryTime
from shared.jobs import REGISTRY, JobStatus
from shared.jobs.envelope import Envelope, utcnow
from shared.jobs.record import JobRecord
from shared.logs import get_logger
from shared.telemetry import inject_context

router = APIRouter(prefix="/v1", tags=["dead letters"])
log = get_logger(__name__)

REQUEUED = Counter(
    "tgflow_dead_letters_requeued_total",
    "Failed jobs put back on their queue (how: single or bulk).",
    ["type", "how"],
)

LIVE_WINDOW = timedelta(minutes=2)  # well beyond the archiver's usual lag
LIVE_MAX = 500
FINISHING_WAIT = 2.0  # seconds a retry waits for the failed run's worker to let go
MAX_REQUEUE = 1000


class DeadLetterFilter(BaseModel):
    """Which dead letters: all filters are optional and combine with AND."""

    model_config = ConfigDict(extra="forbid")

    type: str | None = Field(default=None, min_length=1, max_length=200, description="Job type.")
    error_code: str | None = Field(
        default=None, min_length=1, max_length=200, description="The final error's code."
    )
    since: QueryTime | None = Field(default=None, description="Dead-lettered at or after.")
    until: QueryTime | None = Field(default=None, description="Dead-lettered before.")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError("since must be before until")
        return self

    def matches(self, record: JobRecord) -> bool:
        dead_at = record.dead_at
        return (
            dead_at is not None
            and (self.type is None or record.type == self.type)
            and (self.error_code is None or (record.error and record.error.code) == self.error_code)
            and (self.since is None or dead_at >= self.since)
            and (self.until is None or dead_at < self.until)
        )


class RequeueRequest(DeadLetterFilter):
    limit: int = Field(default=100, ge=1, le=MAX_REQUEUE, description="Requeue at most this many.")


class RequeueSkip(BaseModel):
    id: str
    reason: str = Field(description="Why it stayed: job_not_failed, job_finishing, ...")


class RequeueResult(BaseModel):
    requeued: int
    ids: list[str]
    skipped: list[RequeueSkip] = []


def _position(record: JobRecord) -> tuple[datetime, uuid.UUID]:
    """Where a dead letter sorts: by when it failed for good, then by id (as the archive)."""
    return record.dead_at or record.created_at, uuid.UUID(record.id)


async def dead_letter_page(
    state: State,
    tenant: str,
    flt: DeadLetterFilter,
    limit: int,
    cursor: tuple[datetime, uuid.UUID] | None,
) -> tuple[list[JobRecord], str | None]:
    """One page of a tenant's dead letters, newest first, and the cursor of the next."""
    # Archive rows that Redis shows as moved on (requeued since) are left out; more are
    # read until the page is full, so that stale rows never shorten it or move its floor.
    kept: list[JobRecord] = []
    known: set[str] = set()
    below = cursor
    while True:
        rows = await repository.list_dead_letters(
            state.db,
            tenant,
            job_type=flt.type,
            error_code=flt.error_code,
            since=flt.since,
            until=flt.until,
            limit=limit,
            cursor=below,
        )
        known.update(r.id for r in rows)
        for row, live in zip(rows, await state.jobs.get_many([r.id for r in rows]), strict=True):
            if live is None or live.seq <= row.seq:
                kept.append(row)
            elif flt.matches(live):
                kept.append(live)  # fresher
        floor = _position(rows[-1]) if len(rows) == limit else None
        if floor is None or len(kept) >= limit:
            break
        below = floor
    recent = await state.jobs.recent_dead_letters(utcnow() - LIVE_WINDOW, LIVE_MAX)
    extra = [i for i in recent if i not in known]
    for live in await state.jobs.get_many(extra):
        if live is None or live.tenant != tenant or not flt.matches(live):
            continue
        position = _position(live)
        if (cursor is None or position < cursor) and (floor is None or position > floor):
            kept.append(live)
    kept.sort(key=_position, reverse=True)
    page = kept[:limit]
    last = _position(page[-1]) if len(kept) > limit else floor
    next_cursor = repository.encode_cursor(last[0], str(last[1])) if last else None
    return page, next_cursor


@router.get("/dead-letters", response_model=JobPage, summary="List dead letters, newest first")
async def list_dead_letters(
    state: State,
    principal: Reader,
    type: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    error_code: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    since: QueryTime | None = None,
    until: QueryTime | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> JobPage:
    """Jobs that failed for good (tries exhausted or a permanent error) and were not
    requeued, ordered by when they failed; each with its error history."""
    flt = _filter(type=type, error_code=error_code, since=since, until=until)
    try:
        position = repository.decode_cursor(cursor) if cursor else None
    except repository.InvalidCursor:
        raise ApiError(400, "invalid_cursor", "The cursor is not one this API returned.") from None
    records, next_cursor = await dead_letter_page(state, principal.tenant, flt, limit, position)
    return JobPage(items=[JobOut.of(r) for r in records], next_cursor=next_cursor)


def _filter(**fields: object) -> DeadLetterFilter:
    try:
        return DeadLetterFilter.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "since"
        raise ApiError(
            422,
            "invalid_request",
            f"Invalid request: {first['msg'].removeprefix('Value error, ')}.",
            [{"field": field, "message": first["msg"], "type": first["type"]}],
        ) from None


def requeue_envelope(record: JobRecord) -> Envelope:
    """The envelope a failed job runs again with: same id and params, due now."""
    job_type = REGISTRY[record.type]
    return Envelope(
        id=record.id,
        type=record.type,
        tenant=record.tenant,
        params=record.params,
        timeout=min(record.timeout or job_type.timeout, job_type.timeout),
        created_at=record.created_at,
        run_at=utcnow(),
        idempotency_key=record.idempotency_key,
        trace=inject_context(),
        priority=record.priority,
    )


def _unrunnable(record: JobRecord) -> ApiError | None:
    """Why a job cannot be requeued as it stands, if it cannot."""
    if record.status is not JobStatus.FAILED:
        return ApiError(
            409,
            "job_not_failed",
            f"Only a failed job can be requeued; this one is {record.status}.",
            {"status": record.status},
        )
    job_type = REGISTRY.get(record.type)
    if job_type is None:
        return ApiError(409, "unknown_job_type", f"Job type {record.type} is no longer served.")
    try:
        job_type.params.model_validate(record.params)
    except ValidationError:
        return ApiError(
            409, "invalid_params", f"The job's params are no longer valid for {record.type}."
        )
    return None


def _requeued(record: JobRecord, tenant: str, how: str) -> None:
    REQUEUED.labels(record.type, how).inc()
    log.info("job requeued", job_id=record.id, tenant=tenant, job_type=record.type, how=how)


@router.post(
    "/jobs/{job_id}/retry",
    status_code=202,
    response_model=JobOut,
    summary="Requeue a failed job",
    responses={404: {"description": "No such job"}, 409: {"description": "Not failed"}},
)
async def retry_job(job_id: str, state: State, principal: Writer) -> JobOut:
    """Run a failed job again: same id, tries from the first, error history kept."""
    record = await find_job(state, principal.tenant, job_id)
    if record is None:
        raise ApiError(404, "job_not_found", f"No job {job_id} for this tenant.")
    if (problem := _unrunnable(record)) is not None:
        raise problem
    env = requeue_envelope(record)
    await check_accounts(state, principal.tenant, [env])
    deadline = time.monotonic() + FINISHING_WAIT
    outcome = await state.jobs.requeue(record, env)
    while outcome == "finishing" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        outcome = await state.jobs.requeue(record, env)
    if outcome == "missing":
        raise ApiError(404, "job_not_found", f"No job {job_id} for this tenant.")
    if outcome == "finishing":
        raise ApiError(
            409,
            "job_finishing",
            "The job's last run is still being wrapped up; retry in a moment.",
            headers={"Retry-After": "1"},
        )
    if outcome != "requeued":
        raise ApiError(
            409,
            "job_not_failed",
            f"Only a failed job can be requeued; this one is {outcome}.",
            {"status": outcome},
        )
    _requeued(record, principal.tenant, "single")
    fresh = await state.jobs.get(record.id)
    return JobOut.of(fresh or record)


@router.post(
    "/dead-letters:requeue",
    status_code=202,
    response_model=RequeueResult,
    summary="Requeue the dead letters a filter selects",
)
async def requeue_dead_letters(
    body: RequeueRequest, state: State, principal: Writer
) -> RequeueResult:
    """Requeue up to ``limit`` of the newest matching dead letters (what GET
    /v1/dead-letters with the same filter lists first), in one Redis round trip."""
    records, _ = await dead_letter_page(state, principal.tenant, body, body.limit, None)
    skipped: list[RequeueSkip] = []
    ready: list[tuple[JobRecord, Envelope]] = []
    for record in records:
        if (problem := _unrunnable(record)) is not None:
            skipped.append(RequeueSkip(id=record.id, reason=problem.code))
        else:
            ready.append((record, requeue_envelope(record)))
    blocked = await _blocked_accounts(state, principal.tenant, [env for _, env in ready])
    skipped += [RequeueSkip(id=job_id, reason=reason) for job_id, reason in blocked.items()]
    ready = [(record, env) for record, env in ready if record.id not in blocked]
    outcomes = await state.jobs.requeue_many(ready)
    ids: list[str] = []
    for (record, _), outcome in zip(ready, outcomes, strict=True):
        if outcome == "requeued":
            ids.append(record.id)
            _requeued(record, principal.tenant, "bulk")
        else:
            reason = {"finishing": "job_finishing", "missing": "job_not_found"}
            skipped.append(RequeueSkip(id=record.id, reason=reason.get(outcome, "job_not_failed")))
    return RequeueResult(requeued=len(ids), ids=ids, skipped=skipped)


async def _blocked_accounts(state: State, tenant: str, envs: list[Envelope]) -> dict[str, str]:
    """Jobs whose Telegram account is gone or unusable, by id, with the reason (one query)."""
    wanted = {e.id: uuid.UUID(e.params["account_id"]) for e in envs if "account_id" in e.params}
    if not wanted:
        return {}
    rows = await state.db.fetch(
        "SELECT id, state FROM accounts WHERE id = ANY($1::uuid[]) AND tenant_id = $2",
        list(set(wanted.values())),
        tenant,
    )
    states = {r["id"]: r["state"] for r in rows}
    blocked: dict[str, str] = {}
    for job_id, account_id in wanted.items():
        account_state = states.get(account_id)
        if account_state is None:
            blocked[job_id] = "account_not_found"
        elif account_state in ("disabled", "login_pending"):
            blocked[job_id] = "account_not_active"
    return blocked
