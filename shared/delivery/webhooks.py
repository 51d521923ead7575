"""Completion webhooks in Redis: the delivery record, claiming due attempts, settling them.

A job's final change (in the job store's scripts) writes ``tgflow:webhook:{job_id}``
(status ``pending``, the job's snapshot, the URL) and puts the job id in the
``tgflow:webhooks:due`` sorted set, scored by when the next attempt is due. A deliverer
claims due entries by pushing their score a lease ahead, so no other deliverer takes the
same attempt while it runs, and a crashed claimer's entry becomes due again when the
lease ends. Settling checks the claim token, so a claimer that outlived its lease cannot
overwrite the attempt that replaced it.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, cast
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel
from redis.asyncio import Redis

from shared.delivery.lua import WEBHOOK_DUE, WEBHOOK_PREFIX, webhook_key
from shared.jobs.envelope import from_micros
from shared.jobs.record import JobRecord, JobView

EVENT_FINISHED = "job.finished"
MAX_URL_LENGTH = 2048
_DELIVERY_NAMESPACE = uuid.UUID("6f0b3c1e-9a57-4d3e-8a1f-2c7d5e4b9a10")

# Delivery keys are named after the due set's members inside the script: like the rest
# of tgflow's Redis use, this expects one Redis (or one slot), not a cluster.
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local key = ARGV[5] .. id
  if redis.call('HGET', key, 'status') ~= 'pending' then
    redis.call('ZREM', KEYS[1], id)
  else
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    redis.call('HINCRBY', key, 'attempts', 1)
    redis.call('HSET', key, 'claim', ARGV[4], 'last_attempt_at', ARGV[6], 'next_attempt_at', '')
    out[#out + 1] = redis.call('HGETALL', key)
  end
end
return out
"""

_SETTLE = """
if redis.call('HGET', KEYS[1], 'claim') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'claim', '', unpack(ARGV, 6))
if ARGV[3] == 'pending' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
else
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[5])
end
return 1
"""


class WebhookStatus(StrEnum):
    WAITING = "waiting"  # the job has not finished yet
    PENDING = "pending"  # scheduled, being attempted or waiting to retry
    DELIVERED = "delivered"
    FAILED = "failed"  # gave up after the last attempt


class WebhookState(BaseModel):
    """A job's completion webhook, as ``GET /v1/jobs/{id}`` shows it."""

    url: str
    delivery_id: str
    status: WebhookStatus
    attempts: int = 0
    last_status_code: int | None = None
    last_error: str | None = None
    last_attempt_at: datetime | None = None
    next_attempt_at: datetime | None = None
    delivered_at: datetime | None = None

    @classmethod
    def waiting(cls, job_id: str, url: str) -> WebhookState:
        return cls(url=url, delivery_id=delivery_id(job_id), status=WebhookStatus.WAITING)

    @classmethod
    def from_redis(cls, raw: Mapping[str, str]) -> WebhookState:
        def ts(name: str) -> datetime | None:
            value = raw.get(name)
            return from_micros(value) if value else None

        code = raw.get("last_status_code")
        return cls(
            url=raw["url"],
            delivery_id=delivery_id(raw["job_id"]),
            status=WebhookStatus(raw["status"]),
            attempts=int(raw.get("attempts") or 0),
            last_status_code=int(code) if code else None,
            last_error=raw.get("last_error") or None,
            last_attempt_at=ts("last_attempt_at"),
            next_attempt_at=ts("next_attempt_at"),
            delivered_at=ts("delivered_at"),
        )

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> WebhookState:
        """From a ``webhook_deliveries`` row (final outcomes only)."""
        return cls(
            url=row["url"],
            delivery_id=str(row["delivery_id"]),
            status=WebhookStatus(row["status"]),
            attempts=row["attempts"],
            last_status_code=row["last_status_code"],
            last_error=row["last_error"],
            last_attempt_at=row["last_attempt_at"],
            delivered_at=row["delivered_at"],
        )


def delivery_id(job_id: str) -> str:
    """The ``X-Tgflow-Delivery`` id: stable across retries, derived from the job id."""
    return str(uuid.uuid5(_DELIVERY_NAMESPACE, f"{job_id}:{EVENT_FINISHED}"))


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def url_problem(url: str, *, allow_private: bool) -> str | None:
    """Why ``url`` cannot be a webhook URL, or None if it can.

    Only the URL's form and literal addresses are checked here; a host name that
    resolves to a private address is refused at delivery time.
    """
    if len(url) > MAX_URL_LENGTH:
        return f"longer than {MAX_URL_LENGTH} characters"
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return "contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        return f"malformed ({exc})"
    if parts.scheme not in ("http", "https"):
        return "the scheme must be http or https"
    host = parts.hostname
    if not host:
        return "it names no host"
    if not _is_ip_literal(host):
        try:  # what the HTTP client will do with it: empty labels, labels over 63, ...
            host.encode("idna")
        except UnicodeError:
            return "its host name is not a valid DNS name"
    if allow_private:
        return None
    if host == "localhost" or host.endswith(".localhost"):
        return "it points at this machine (set TGFLOW_WEBHOOK_ALLOW_PRIVATE to allow)"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if not address.is_global:
        return "it points at a private address (set TGFLOW_WEBHOOK_ALLOW_PRIVATE to allow)"
    return None


@dataclass(frozen=True)
class Claim:
    """One claimed attempt of one delivery."""

    job_id: str
    tenant: str
    url: str
    job: JobRecord
    attempt: int
    token: str
    created_us: int

    @property
    def delivery_id(self) -> str:
        return delivery_id(self.job_id)

    def body(self) -> bytes:
        """The POST body: the same bytes on every attempt."""
        view = JobView.model_validate(self.job.model_dump(include=set(JobView.model_fields)))
        return orjson.dumps(
            {
                "id": self.delivery_id,
                "event": EVENT_FINISHED,
                "created_at": from_micros(self.created_us),
                "job": view.model_dump(mode="json"),
            }
        )


class WebhookStore:
    """Claim, settle and read completion deliveries."""

    def __init__(self, redis: Redis, *, ttl: int) -> None:
        self.redis = redis
        self.ttl = ttl  # how long a settled delivery stays readable in Redis
        self._claim = redis.register_script(_CLAIM)
        self._settle = redis.register_script(_SETTLE)

    async def claim(self, now_us: int, lease_ms: int, limit: int, token: str) -> list[Claim]:
        """Take up to ``limit`` due attempts for ``lease_ms``; each counts as an attempt."""
        now_ms = now_us // 1000
        rows = await self._claim(
            keys=[WEBHOOK_DUE],
            args=[now_ms, now_ms + lease_ms, limit, token, WEBHOOK_PREFIX, now_us],
        )
        claims = []
        for flat in rows:
            raw = dict(zip(flat[::2], flat[1::2], strict=True))
            claims.append(
                Claim(
                    job_id=raw["job_id"],
                    tenant=raw["tenant"],
                    url=raw["url"],
                    job=JobRecord.from_redis(orjson.loads(raw["job"])),
                    attempt=int(raw["attempts"]),
                    token=token,
                    created_us=int(raw["created_at"]),
                )
            )
        return claims

    async def settle(
        self,
        claim: Claim,
        status: WebhookStatus,
        fields: Mapping[str, str],
        *,
        next_us: int = 0,
    ) -> bool:
        """Record an attempt's outcome; ``pending`` makes the next attempt due at
        ``next_us``. False if the claim was lost (its lease ended and another took it)."""
        args: list[Any] = [claim.token, claim.job_id, status.value, next_us // 1000, self.ttl]
        for name, value in fields.items():
            args += [name, value]
        done = await self._settle(keys=[webhook_key(claim.job_id), WEBHOOK_DUE], args=args)
        return bool(done)

    async def next_due(self) -> tuple[int, float | None]:
        """How many deliveries are pending, and when (epoch ms) the earliest is due."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(WEBHOOK_DUE)
            pipe.zrange(WEBHOOK_DUE, 0, 0, withscores=True)
            count, first = await pipe.execute()
        return int(count), (float(first[0][1]) if first else None)

    async def get(self, job_id: str) -> dict[str, str] | None:
        raw = cast(dict[str, str], await self.redis.hgetall(webhook_key(job_id)))  # type: ignore[misc]
        return raw or None
