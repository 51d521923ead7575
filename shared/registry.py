"""Service discovery: every process announces itself in Redis with a heartbeat.

The monitor scrapes what is announced, the gateway's readiness counts live workers,
and ``GET /v1/workers`` lists them; nothing needs static configuration.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from typing import cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.aio import raise_if_cancelling, sleep_unless

log = logging.getLogger(__name__)

INSTANCES = "tgflow:instances"


def instance_key(instance_id: str) -> str:
    return f"tgflow:instance:{instance_id}"


async def announce(redis: Redis, instance_id: str, fields: Mapping[str, str], ttl: float) -> None:
    """Record (or refresh) an instance; it disappears ``ttl`` seconds after its last beat."""
    now = time.time()
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(instance_key(instance_id), mapping={**fields, "heartbeat_at": repr(now)})
        pipe.pexpire(instance_key(instance_id), int(ttl * 1000))
        pipe.zadd(INSTANCES, {instance_id: now + ttl})
        await pipe.execute()


async def withdraw(redis: Redis, instance_id: str) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(instance_key(instance_id))
        pipe.zrem(INSTANCES, instance_id)
        await pipe.execute()


async def live_instances(redis: Redis, kind: str | None = None) -> list[dict[str, str]]:
    """Instances whose last heartbeat has not expired, optionally of one kind."""
    now = time.time()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zremrangebyscore(INSTANCES, "-inf", now)
        pipe.zrange(INSTANCES, 0, -1)
        _, ids = await pipe.execute()
    if not ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for instance_id in ids:
            pipe.hgetall(instance_key(instance_id))
        rows = cast(list[dict[str, str]], await pipe.execute())
    return [r for r in rows if r and (kind is None or r.get("kind") == kind)]


async def heartbeat_forever(
    redis: Redis,
    instance_id: str,
    fields: Callable[[], Mapping[str, str]],
    *,
    interval: float,
    stop: asyncio.Event,
) -> None:
    """Announce every ``interval`` seconds until ``stop`` is set, riding out Redis outages."""
    while not stop.is_set():
        try:
            await announce(redis, instance_id, fields(), ttl=interval * 3)
        except (RedisError, OSError) as exc:
            raise_if_cancelling()
            log.warning("heartbeat of %s failed: %s", instance_id, type(exc).__name__)
        if await sleep_unless(stop, interval):
            return


def advertised_host(bind_host: str) -> str:
    """A host others can reach this process at: the bind address, or our IP for a wildcard."""
    if bind_host in ("0.0.0.0", "::", ""):
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return socket.gethostname()
    return bind_host


def new_instance_id(kind: str) -> str:
    return f"{kind}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
