"""The Redis side of a job: atomic submit, state transitions, cancellation and reads.

Each operation is one Lua script, so the idempotency check, the job hash, the ARQ queue
entry, the archive stream entry and the wake-up nudge change together or not at all.
The ``tgflow:archive`` stream carries a snapshot of every change; workers copy it into
the Postgres ``jobs`` table, keeping the gateway free of database writes. Each script
also calls ``job_changed`` (``shared/delivery/lua.py``) after its change: the job's live
event for SSE listeners and, at a final state, its webhook delivery, in the same step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, cast

import orjson
from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared import serialization
from shared.delivery.lua import ON_CHANGE, WEBHOOK_DUE, webhook_key
from shared.jobs.contract import QueueKind, queue_key
from shared.jobs.envelope import Envelope, to_micros
from shared.jobs.record import JobErrorInfo, JobRecord
from shared.telemetry import trace_id_of

ARCHIVE_STREAM = "tgflow:archive"
ARQ_JOB_EXTRA_MS = 7 * 86_400_000  # how long an ARQ job definition outlives its run_at

_SNAPSHOT = """
local function snapshot(key)
  local flat = redis.call('HGETALL', key)
  local obj = {}
  for i = 1, #flat, 2 do obj[flat[i]] = flat[i + 1] end
  return cjson.encode(obj)
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
redis.call('HSET', KEYS[2], unpack(ARGV, 8))
redis.call('PSETEX', KEYS[3], ARGV[6], ARGV[4])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
redis.call('XADD', KEYS[5], '*', 'job', snapshot(KEYS[2]))
redis.call('PUBLISH', ARGV[7], 'job')
job_changed(KEYS[2], '', false)
return {1, ARGV[1]}
"""
)

_TRANSITION = (
    _SNAPSHOT
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
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('HINCRBY', KEYS[1], 'seq', 1)
if ARGV[2] == '0' then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
redis.call('XADD', KEYS[2], '*', 'job', snapshot(KEYS[1]))
job_changed(KEYS[1], status, sets_status(ARGV, 3), KEYS[3], KEYS[4])
return {1, status}
"""
)

_CANCEL = (
    _SNAPSHOT
    + ON_CHANGE
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status == 'succeeded' or status == 'failed' or status == 'cancelled' then return status end
if status == 'running' or redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  redis.call('PUBLISH', ARGV[5], 'cancel')
  return 'cancelling'
end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[3],
           'error', ARGV[6], 'cancel_requested', '1')
redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('XADD', KEYS[6], '*', 'job', snapshot(KEYS[1]))
job_changed(KEYS[1], status, true, KEYS[7], KEYS[8])
return 'cancelled'
"""
)


def job_key(job_id: str) -> str:
    return f"tgflow:job:{job_id}"


def nudge_channel(kind: QueueKind | str) -> str:
    return f"tgflow:nudge:{QueueKind(kind).value}"


def idempotency_key(tenant: str, key: str) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()[:40]
    return f"tgflow:idem:{tenant}:{digest}"


CANCELLED_ERROR = JobErrorInfo(code="cancelled", message="The job was cancelled.")


class JobStore:
    """Live job state in Redis; the only code that changes a job hash."""

    def __init__(self, redis: Redis, *, status_ttl: int, idempotency_ttl: int) -> None:
        self.redis = redis
        self.status_ttl = status_ttl
        self.idempotency_ttl = idempotency_ttl
        self._submit = redis.register_script(_SUBMIT)
        self._transition = redis.register_script(_TRANSITION)
        self._cancel = redis.register_script(_CANCEL)

    def _submit_call(self, env: Envelope, kind: QueueKind) -> tuple[list[str], list[Any]]:
        created_us = to_micros(env.created_at)
        run_at_us = to_micros(env.run_at)
        payload = serialize_job(
            env.type,
            (env.model_dump(mode="json"),),
            {},
            None,
            created_us // 1000,
            serializer=serialization.dumps,
        )
        fields: dict[str, str] = {
            "id": env.id,
            "tenant": env.tenant,
            "type": env.type,
            "queue": kind.value,
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
        keys = [
            idempotency_key(env.tenant, env.idempotency_key) if env.idempotency_key else "",
            job_key(env.id),
            job_key_prefix + env.id,
            queue_key(kind),
            ARCHIVE_STREAM,
        ]
        delay_ms = max(0, (run_at_us - created_us) // 1000)
        args: list[Any] = [
            env.id,
            "1" if env.idempotency_key else "0",
            self.idempotency_ttl,
            payload,
            run_at_us // 1000,
            delay_ms + ARQ_JOB_EXTRA_MS,
            nudge_channel(kind),
        ]
        for name, value in fields.items():
            args += [name, value]
        return keys, args

    async def submit(self, env: Envelope, kind: QueueKind) -> tuple[str, bool]:
        """Enqueue a job; with an idempotency key seen before, return the earlier job id."""
        keys, args = self._submit_call(env, kind)
        created, job_id = await self._submit(keys=keys, args=args)
        return str(job_id), bool(created)

    async def submit_in(self, pipe: Pipeline, env: Envelope, kind: QueueKind) -> None:
        """Queue a submit on a pipeline, for batches in one round trip."""
        keys, args = self._submit_call(env, kind)
        await self._submit(keys=keys, args=args, client=pipe)

    async def transition(
        self,
        job_id: str,
        fields: Mapping[str, str],
        *,
        allowed_from: tuple[str, ...] = (),
        final: bool = False,
    ) -> tuple[bool, str]:
        """Set fields on a job hash if its status is one of ``allowed_from``.

        Returns whether it changed and the status it had before. A final transition
        starts the hash's expiry; any other keeps it alive.
        """
        args: list[Any] = [",".join(allowed_from), self.status_ttl if final else 0]
        for name, value in fields.items():
            args += [name, value]
        changed, previous = await self._transition(
            keys=[job_key(job_id), ARCHIVE_STREAM, WEBHOOK_DUE, webhook_key(job_id)], args=args
        )
        return bool(changed), str(previous)

    async def cancel(self, job_id: str, kind: QueueKind, now_us: int) -> str:
        """Cancel a queued job at once, or ask its worker to stop a running one."""
        result = await self._cancel(
            keys=[
                job_key(job_id),
                in_progress_key_prefix + job_id,
                queue_key(kind),
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
                nudge_channel(kind),
                CANCELLED_ERROR.model_dump_json(),
            ],
        )
        return str(result)

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
