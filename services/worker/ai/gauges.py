"""Keep each worker's breaker and slot gauges true to the cluster's state in Redis.

The gauges also change on every call, but a worker that has made no call since another
worker's probe closed a breaker would go on reporting it open; this refresh fixes that
(and makes the gauges exist before the first call, for alert rules).
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.worker.ai import metrics
from services.worker.ai.breaker import Breaker, breaker_key
from services.worker.ai.semaphore import holders_key
from shared.aio import raise_if_cancelling, sleep_unless


async def refresh(redis: Redis, breaker: Breaker, providers: list[str]) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for name in providers:
            pipe.hget(breaker_key(name), "state")
            pipe.zcard(holders_key(name))
        values = await pipe.execute()
    for i, name in enumerate(providers):
        breaker.saw(name, values[2 * i] or "closed")
        metrics.SEMAPHORE_IN_USE.labels(name).set(int(values[2 * i + 1]))


async def watch(
    redis: Redis, breaker: Breaker, providers: list[str], interval: float, stop: asyncio.Event
) -> None:
    """Refresh every ``interval`` seconds until ``stop`` is set."""
    while True:
        try:
            await refresh(redis, breaker, providers)
        except RedisError:
            raise_if_cancelling()
        if await sleep_unless(stop, interval):
            return
