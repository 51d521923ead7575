"""The Redis side of a job: atomic submit, state transitions, cancellation and reads.

Each operation is one Lua script, so the idempotency check, the job hash, the ARQ queue
entry and the archive stream entry change together or not at all; a submit's wake-up
nudge follows its script in the same round trip (a nudge is only a hint: consumers poll
as well).
The ``tgflow:archive`` stream carries a snapshot of every change; workers copy it into
the Postgres ``jobs`` table, keeping the gateway free of database writes. Each script
also calls ``job_changed`` (``shared/delivery/lua.py``) after its change: the job's live
event for SSE listeners and, at a final state, its webhook delivery, in the same step.

Dead letters: a job that ends ``failed`` gets ``dead_at`` and joins the ``tgflow:deadletters``
sorted set (score: epoch milliseconds) in the same step; a requeue takes it out again. The
set holds a placeholder member at score 0 so that it survives being emptied (the monitor
reads a missing key as "no source"); real members always have a positive score.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

import orjson
from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis

from shared import serialization
from shared.config import BaseAppSettings
from shared.delivery.lua import ON_CHANGE, WEBHOOK_DUE, webhook_key
from shared.jobs.contract import REGISTRY, JobStatus, QueueKind
from shared.jobs.envelope import Envelope, to_micros, utcnow
from shared.jobs.record import JobErrorInfo, JobRecord
from shared.jobs.routing import Route, route_of, score_of
from shared.pipelining import AutoPipeline
from shared.telemetry import trace_id_of

T = TypeVar("T")

ARCHIVE_STREAM = "tgflow:archive"
DEAD_LETTERS = "tgflow:deadletters"
DEAD_LETTER_PLACEHOLDER = "placeholder"
ARQ_JOB_EXTRA_MS = 7 * 86_400_000  # how long an ARQ job definition outlives its run_at
HISTORY_MAX = 50  # failed runs kept per job (the oldest are dropped first)
MESSAGE_MAX = 2000  # characters of an error message kept in the history

_SNAPSHOT = """
local function snapshot(key)
  local flat = redis.call('HGETALL', key)
  local obj = {}
  for i = 1, #flat, 2 do obj[flat[i]] = flat[i + 1] end
  return cjson.encode(obj)
end
"""

# A job's idempotency key answers for the job while it is queued or running, and for the
# key's TTL after the job ends: set with the job's delay plus the TTL at submit, kept
# (no expiry) once the job is started, deferred, retried or requeued, and given the TTL
# again when the job ends (never less than it has left). The key's name and TTL are in
# the job hash (one Redis, as everywhere in tgflow: the name is not among the KEYS).
_IDEMPOTENCY = """
local function keep_idempotency(job, final)
  local f = redis.call('HMGET', job, 'idempotency_ref', 'idempotency_ttl', 'id')
  if not f[1] or f[1] == '' or redis.call('GET', f[1]) ~= f[3] then return end
  if not final then
    redis.call('PERSIST', f[1])
  elseif redis.call('TTL', f[1]) < tonumber(f[2]) then
    redis.call('EXPIRE', f[1], f[2])
  end
end
"""

_SUBMIT = (
    _SNAPSHOT
    + ON_CHANGE
    + """
if ARGV[2] == '1' then
  local existing = redis.call('GET', KEYS[1])
  if existing then return {0, existing} end
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
end
redis.call('HSET', KEYS[2], unpack(ARGV, 7))
redis.call('PSETEX', KEYS[3], ARGV[6], ARGV[4])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
redis.call('XADD', KEYS[5], '*', 'job', snapshot(KEYS[2]))
job_changed(KEYS[2], '', false)
return {1, ARGV[1]}
"""
)

# ARGV[3] is '' or a JSON object of extras, decoded only when given:
#   failure: {code, message, at, final} appended to the history, with the hash's own
#            attempts and requeued counts (at most history_max entries are kept);
#   dead:    {id, at_us, score, oldest, max}: set dead_at, add to the dead letters and trim
#            them to scores above ``oldest`` and at most ``max`` members.
_FAILURE = (
    """
local function record_failure(key, dead_key, opts)
  if opts.failure then
    local entry = opts.failure
    entry.attempt = tonumber(redis.call('HGET', key, 'attempts') or '0') or 0
    entry.requeue = tonumber(redis.call('HGET', key, 'requeued') or '0') or 0
    local raw = redis.call('HGET', key, 'history')
    local history = {}
    if raw and raw ~= '' then history = cjson.decode(raw) end
    table.insert(history, entry)
    while #history > opts.history_max do table.remove(history, 1) end
    redis.call('HSET', key, 'history', cjson.encode(history))
  end
  local dead = opts.dead
  if dead then
    redis.call('HSET', key, 'dead_at', dead.at_us)
    redis.call('ZADD', dead_key, 0, '"""
    + DEAD_LETTER_PLACEHOLDER
    + """')
    redis.call('ZADD', dead_key, dead.score, dead.id)
    redis.call('ZREMRANGEBYSCORE', dead_key, '(0', '(' .. dead.oldest)
    redis.call('ZREMRANGEBYRANK', dead_key, 1, -(tonumber(dead.max) + 1))
  end
end
"""
)

_TRANSITION = (
    _SNAPSHOT
    + _FAILURE
    + _IDEMPOTENCY
    + ON_CHANGE
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {0, ''} end
if ARGV[1] ~= '' then
  local allowed = false
  for s in string.gmatch(ARGV[1], '[^,]+') do
    if s == status then allowed = true end
  end
  if not allowed then return {0, status} end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
if ARGV[3] ~= '' then record_failure(KEYS[1], KEYS[3], cjson.decode(ARGV[3])) end
redis.call('HINCRBY', KEYS[1], 'seq', 1)
if ARGV[2] == '0' then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
keep_idempotency(KEYS[1], ARGV[2] ~= '0')
redis.call('XADD', KEYS[2], '*', 'job', snapshot(KEYS[1]))
job_changed(KEYS[1], status, sets_status(ARGV, 4), KEYS[4], KEYS[5])
if KEYS[6] then
  -- The run is over: ARQ's own bookkeeping goes in the same step (what its finish does):
  -- in-progress lease, try count and job definition, abort mark, queue entry.
  local id = redis.call('HGET', KEYS[1], 'id')
  redis.call('DEL', KEYS[6], KEYS[7], KEYS[8])
  redis.call('ZREM', KEYS[9], id)
  redis.call('ZREM', KEYS[10], id)
end
return {1, status}
"""
)

_CANCEL = (
    _SNAPSHOT
    + _IDEMPOTENCY
    + ON_CHANGE
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status == 'succeeded' or status == 'failed' or status == 'cancelled' then return status end
if status == 'running' or redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  redis.call('PUBLISH', ARGV[5], ARGV[7])
  return 'cancelling'
end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[3],
           'error', ARGV[6], 'cancel_requested', '1')
redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('EXPIRE', KEYS[1], ARGV[4])
keep_idempotency(KEYS[1], true)
redis.call('XADD', KEYS[6], '*', 'job', snapshot(KEYS[1]))
job_changed(KEYS[1], status, true, KEYS[7], KEYS[8])
return 'cancelled'
"""
)


# KEYS: job hash, ARQ job, queue, archive, dead letters, ARQ retry count, ARQ in-progress.
# ARGV: id, tenant, ARQ job payload, score (ms), payload ttl (ms), nudge channel, now (us),
#       the new run's trace id ('' keeps the old), the nudge message, then the job hash to
#       rebuild (from the archive) when it has expired.
_REQUEUE = (
    _SNAPSHOT
    + _IDEMPOTENCY
    + ON_CHANGE
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if status and redis.call('HGET', KEYS[1], 'tenant') ~= ARGV[2] then return 'missing' end
if status and status ~= 'failed' then return status end
-- The failed run's worker has not yet removed its ARQ job: requeuing now would race it.
if redis.call('EXISTS', KEYS[7]) == 1 then return 'finishing' end
if not status then
  if #ARGV < 10 then return 'missing' end
  redis.call('HSET', KEYS[1], unpack(ARGV, 10))
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'attempts', '0', 'run_at', ARGV[7],
           'error', '', 'result', '', 'progress', '', 'started_at', '', 'finished_at', '',
           'dead_at', '', 'worker', '', 'cancel_requested', '')
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'trace_id', ARGV[8]) end
redis.call('HINCRBY', KEYS[1], 'requeued', 1)
redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('PERSIST', KEYS[1])
keep_idempotency(KEYS[1], false)
redis.call('DEL', KEYS[6])
redis.call('PSETEX', KEYS[2], ARGV[5], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[5], 0, '"""
    + DEAD_LETTER_PLACEHOLDER
    + """')
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('XADD', KEYS[4], '*', 'job', snapshot(KEYS[1]))
redis.call('PUBLISH', ARGV[6], ARGV[9])
job_changed(KEYS[1], 'failed', false)
return 'requeued'
"""
)


# KEYS: ARQ in-progress, queue, job hash, archive, ARQ try count, ARQ job, ARQ abort set.
# ARGV: id, now (ms), lease (ms), worker id, now (us).
# Claims a due job for this worker and begins its run, all that ARQ's WATCH/EXISTS/ZSCORE/
# MULTI claim and its start (read the job, count the try, take the abort mark) do, in one
# step; when the job hash is queued or running and the run can go ahead, it is recorded as
# started too. Answers 0 when the job is not ours to run, else
# {score, 1 if started here, ARQ job or nil, try number, 1 if aborted before start}.
_CLAIM = (
    _SNAPSHOT
    + _IDEMPOTENCY
    + ON_CHANGE
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return 0 end
redis.call('PSETEX', KEYS[1], ARGV[3], '1')
local payload = redis.call('GET', KEYS[6])
local tries = redis.call('INCR', KEYS[5])
redis.call('EXPIRE', KEYS[5], 88400)
local aborted = redis.call('ZREM', KEYS[7], ARGV[1])
-- A cancel asked of an earlier run (its abort mark taken already) ends the job here too.
if redis.call('HGET', KEYS[3], 'cancel_requested') == '1' then aborted = 1 end
local status = redis.call('HGET', KEYS[3], 'status')
if not payload or aborted == 1 or (status ~= 'queued' and status ~= 'running') then
  return {score, 0, payload or false, tries, aborted}
end
redis.call('HSET', KEYS[3], 'status', 'running', 'attempts', tries, 'started_at', ARGV[5],
           'worker', ARGV[4])
redis.call('HINCRBY', KEYS[3], 'seq', 1)
redis.call('PERSIST', KEYS[3])
keep_idempotency(KEYS[3], false)
redis.call('XADD', KEYS[4], '*', 'job', snapshot(KEYS[3]))
job_changed(KEYS[3], status, true)
return {score, 1, payload, tries, 0}
"""
)


@dataclass(frozen=True, slots=True)
class Claim:
    """A job claimed for a run (see ``JobStore.claim``)."""

    score: int
    started: bool  # the claim recorded the run as started
    payload: bytes | None  # ARQ's job definition; None when it has expired
    tries: int  # this run's try number, as ARQ counts them
    aborted: bool  # cancelled before it started


async def _all(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Await calls started together; if any failed, raise the first failure (after every
    call has ended, so that no failure goes unread)."""
    answers = await asyncio.gather(*calls, return_exceptions=True)
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
    return cast(list[T], answers)


def job_key(job_id: str) -> str:
    return f"tgflow:job:{job_id}"


def nudge_channel(kind: QueueKind | str) -> str:
    """Wake-ups for one kind of queue; the message names the queue (see ``Route.nudge``)."""
    return f"tgflow:nudge:{QueueKind(kind).value}"


def idempotency_key(tenant: str, key: str) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()[:40]
    return f"tgflow:idem:{tenant}:{digest}"


CANCELLED_ERROR = JobErrorInfo(code="cancelled", message="The job was cancelled.")


def arq_payload(env: Envelope) -> bytes:
    """The ARQ job definition of a job: its envelope as JSON, never pickle."""
    return serialize_job(
        env.type,
        (env.model_dump(mode="json"),),
        {},
        None,
        to_micros(env.created_at) // 1000,
        serializer=serialization.dumps,
    )


class JobStore:
    """Live job state in Redis; the only code that changes a job hash."""

    def __init__(
        self,
        redis: Redis,
        *,
        status_ttl: int,
        idempotency_ttl: int,
        shards: int,
        dead_letter_max: int = 100_000,
        dead_letter_max_age: float = 30 * 86_400.0,
    ) -> None:
        self.redis = redis
        self.shards = shards
        self.status_ttl = status_ttl
        self.idempotency_ttl = idempotency_ttl
        self.dead_letter_max = dead_letter_max
        self.dead_letter_max_age = dead_letter_max_age
        self._submit = redis.register_script(_SUBMIT)
        self._transition = redis.register_script(_TRANSITION)
        self._cancel = redis.register_script(_CANCEL)
        self._requeue = redis.register_script(_REQUEUE)
        self._claim = redis.register_script(_CLAIM)
        self.batch = AutoPipeline(redis)

    def _queue_for(self, record: JobRecord) -> tuple[str, str, str]:
        """The ARQ queue key, nudge channel and nudge message of a job's queue."""
        route = self.route_of_record(record)
        return route.queue, nudge_channel(route.kind), route.nudge

    @classmethod
    def for_settings(cls, redis: Redis, settings: BaseAppSettings) -> JobStore:
        return cls(
            redis,
            status_ttl=settings.job_status_ttl,
            idempotency_ttl=settings.idempotency_ttl,
            shards=settings.telegram_shards,
            dead_letter_max=settings.dead_letter_max,
            dead_letter_max_age=settings.dead_letter_retention_days * 86_400,
        )

    def route(self, job_type: str, params: Mapping[str, Any]) -> Route:
        return route_of(REGISTRY[job_type].queue, params, self.shards)

    def route_of_record(self, record: JobRecord) -> Route:
        """From the job's own queue kind: right even if its type has left the catalogue."""
        return route_of(QueueKind(record.queue), record.params, self.shards)

    def _submit_call(self, env: Envelope) -> tuple[list[str], list[Any], tuple[str, str]]:
        route = self.route(env.type, env.params)
        created_us = to_micros(env.created_at)
        run_at_us = to_micros(env.run_at)
        payload = arq_payload(env)
        fields: dict[str, str] = {
            "id": env.id,
            "tenant": env.tenant,
            "type": env.type,
            "queue": route.kind.value,
            "priority": env.priority,
            "status": "queued",
            "attempts": "0",
            "params": orjson.dumps(env.params).decode(),
            "created_at": str(created_us),
            "run_at": str(run_at_us),
            "timeout": repr(env.timeout),
            "idempotency_key": env.idempotency_key or "",
            "trace_id": trace_id_of(env.trace),
            "seq": "1",
        }
        if env.webhook_url:
            fields["webhook_url"] = env.webhook_url
        idem = idempotency_key(env.tenant, env.idempotency_key) if env.idempotency_key else ""
        if idem:  # for keep_idempotency, as the job goes on
            fields["idempotency_ref"] = idem
            fields["idempotency_ttl"] = str(self.idempotency_ttl)
        keys = [
            idem,
            job_key(env.id),
            job_key_prefix + env.id,
            route.queue,
            ARCHIVE_STREAM,
        ]
        delay_ms = max(0, (run_at_us - created_us) // 1000)
        args: list[Any] = [
            env.id,
            "1" if env.idempotency_key else "0",
            self.idempotency_ttl + math.ceil(delay_ms / 1000),  # see _IDEMPOTENCY
            payload,
            score_of(run_at_us // 1000, env.priority),
            delay_ms + ARQ_JOB_EXTRA_MS,
        ]
        for name, value in fields.items():
            args += [name, value]
        return keys, args, (nudge_channel(route.kind), route.nudge)

    async def submit(self, env: Envelope) -> tuple[str, bool]:
        """Enqueue a job; with an idempotency key seen before, return the earlier job id.

        The nudge that wakes the job's consumers follows the script in the same round
        trip, once for all the jobs of that trip bound for the same queue.
        """
        keys, args, nudge = self._submit_call(env)
        created, job_id = await self.batch.run(self._submit, keys, args, then_publish=nudge)
        return str(job_id), bool(created)

    async def idempotent_jobs(self, keys: list[tuple[str, str]]) -> list[str | None]:
        """The job each (tenant, idempotency key) names now, None for none, in one round
        trip (none for no keys)."""
        if not keys:
            return []
        found = await self.redis.mget([idempotency_key(tenant, key) for tenant, key in keys])
        return [None if job_id is None else str(job_id) for job_id in found]

    async def submit_many(self, envs: list[Envelope]) -> list[tuple[str, bool]]:
        """``submit`` for each of ``envs``, made in one loop turn: one round trip."""
        return await _all(self.submit(env) for env in envs)

    async def transition(
        self,
        job_id: str,
        fields: Mapping[str, str],
        *,
        allowed_from: tuple[str, ...] = (),
        final: bool = False,
        failure: JobErrorInfo | None = None,
        arq_queue: str | None = None,
    ) -> tuple[bool, str]:
        """Set fields on a job hash if its status is one of ``allowed_from``.

        Returns whether it changed and the status it had before. A final transition
        starts the hash's expiry; any other keeps it alive. ``failure`` (a failed run
        that will retry) is appended to the job's error history. A move to ``failed``
        appends its ``error`` there too and dead-letters the job, all in the same step.
        With ``arq_queue`` (a run's last word), ARQ's finishing of the job in that queue
        happens in the same step too, and the worker skips its own.
        """
        extras = self._failure_extras(job_id, fields, failure)
        args: list[Any] = [",".join(allowed_from), self.status_ttl if final else 0, extras]
        for name, value in fields.items():
            args += [name, value]
        keys = [job_key(job_id), ARCHIVE_STREAM, DEAD_LETTERS, WEBHOOK_DUE, webhook_key(job_id)]
        if arq_queue is not None:
            keys += [
                in_progress_key_prefix + job_id,
                retry_key_prefix + job_id,
                job_key_prefix + job_id,
                abort_jobs_ss,
                arq_queue,
            ]
        changed, previous = await self.batch.run(self._transition, keys, args)
        return bool(changed), str(previous)

    def _failure_extras(
        self, job_id: str, fields: Mapping[str, str], failure: JobErrorInfo | None
    ) -> str:
        """The transition script's history and dead-letter instructions ('' for none)."""
        dead = fields.get("status") == JobStatus.FAILED
        if dead and failure is None and fields.get("error"):
            failure = JobErrorInfo.model_validate_json(fields["error"])
        if failure is None and not dead:
            return ""
        now = utcnow()
        extras: dict[str, Any] = {"history_max": HISTORY_MAX}
        if failure is not None:
            extras["failure"] = {
                "code": failure.code,
                "message": failure.message[:MESSAGE_MAX],
                "at": now.isoformat(timespec="microseconds"),
                "final": dead,
            }
        if dead:
            oldest = now - timedelta(seconds=self.dead_letter_max_age)
            extras["dead"] = {
                "id": job_id,
                "at_us": str(to_micros(now)),
                "score": str(to_micros(now) // 1000),
                "oldest": str(to_micros(oldest) // 1000),
                "max": str(self.dead_letter_max),
            }
        return orjson.dumps(extras).decode()

    async def claim(
        self, job_id: str, queue: str, *, lease_ms: int, worker: str, now_us: int
    ) -> Claim | None:
        """Claim a due job of ``queue`` and begin its run (None when it is running
        elsewhere, gone or not due). Claims made in one loop turn share a round trip."""
        keys = [
            in_progress_key_prefix + job_id,
            queue,
            job_key(job_id),
            ARCHIVE_STREAM,
            retry_key_prefix + job_id,
            job_key_prefix + job_id,
            abort_jobs_ss,
        ]
        answer = await self.batch.run(
            self._claim, keys, [job_id, now_us // 1000, lease_ms, worker, now_us]
        )
        if not answer:
            return None
        score, started, payload, tries, aborted = answer
        if isinstance(payload, str):
            payload = payload.encode()
        return Claim(int(float(score)), bool(started), payload, int(tries), bool(aborted))

    async def cancel(self, record: JobRecord, now_us: int) -> str:
        """Cancel a queued job at once, or ask its worker to stop a running one."""
        job_id = record.id
        route = self.route_of_record(record)
        result = await self._cancel(
            keys=[
                job_key(job_id),
                in_progress_key_prefix + job_id,
                route.queue,
                job_key_prefix + job_id,
                abort_jobs_ss,
                ARCHIVE_STREAM,
                WEBHOOK_DUE,
                webhook_key(job_id),
            ],
            args=[
                job_id,
                now_us // 1000,
                now_us,
                self.status_ttl,
                nudge_channel(route.kind),
                CANCELLED_ERROR.model_dump_json(),
                route.nudge,
            ],
        )
        return str(result)

    def _requeue_call(self, record: JobRecord, env: Envelope) -> tuple[list[str], list[Any]]:
        queue, channel, message = self._queue_for(record)
        run_at_us = to_micros(env.run_at)
        keys = [
            job_key(record.id),
            job_key_prefix + record.id,
            queue,
            ARCHIVE_STREAM,
            DEAD_LETTERS,
            retry_key_prefix + record.id,
            in_progress_key_prefix + record.id,
        ]
        args: list[Any] = [
            record.id,
            record.tenant,
            arq_payload(env),
            score_of(run_at_us // 1000, env.priority),
            ARQ_JOB_EXTRA_MS,
            channel,
            run_at_us,
            trace_id_of(env.trace),
            message,
        ]
        if record.status is JobStatus.FAILED:  # enough to rebuild an expired hash
            rebuilt = record.hash_fields()
            if record.idempotency_key:
                rebuilt["idempotency_ref"] = idempotency_key(record.tenant, record.idempotency_key)
                rebuilt["idempotency_ttl"] = str(self.idempotency_ttl)
            for name, value in rebuilt.items():
                args += [name, value]
        return keys, args

    async def requeue(self, record: JobRecord, env: Envelope) -> str:
        """Put a failed job back on its queue at ``env.run_at``, in one atomic step.

        Same id, tries from 1 again, history kept, ``requeued`` counted, out of the dead
        letters. A job hash that has expired is rebuilt from ``record`` (an archive row).
        Returns ``requeued``, or why not: ``missing``, ``finishing`` (the failed run is
        still being cleaned up; try again shortly) or the job's status.
        """
        keys, args = self._requeue_call(record, env)
        return str(await self.batch.run(self._requeue, keys, args))

    async def requeue_many(self, jobs: list[tuple[JobRecord, Envelope]]) -> list[str]:
        """``requeue`` for each job, made in one loop turn: one round trip."""
        return await _all(self.requeue(record, env) for record, env in jobs)

    async def recent_dead_letters(self, since: datetime, limit: int) -> list[str]:
        """Ids dead-lettered since ``since``, newest first (any tenant)."""
        ids = await self.redis.zrevrangebyscore(
            DEAD_LETTERS, "+inf", f"({to_micros(since) // 1000}", start=0, num=limit
        )
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def get_many(self, job_ids: list[str]) -> list[JobRecord | None]:
        """Several jobs' live records in one round trip (None where Redis has none)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(job_key(job_id))
            rows = cast(list[dict[str, str]], await pipe.execute())
        return [JobRecord.from_redis(raw) if raw else None for raw in rows]

    async def get(self, job_id: str) -> JobRecord | None:
        raw = cast(dict[str, str], await self.redis.hgetall(job_key(job_id)))  # type: ignore[misc]
        return JobRecord.from_redis(raw) if raw else None
