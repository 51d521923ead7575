"""Wake idle consumers when a job is enqueued or cancelled (Redis pub/sub)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.aio import message_unless, raise_if_cancelling, sleep_unless
from shared.logs import get_logger

log = get_logger(__name__)


async def listen_for_nudges(
    redis: Redis, routes: Mapping[str, Callable[[str], None]], stop: asyncio.Event
) -> None:
    """Hand each message to its channel's route; reconnect with backoff on failure.

    After every (re)subscription each route is called with ``"*"``: anything enqueued
    while nobody listened is looked at once.
    """
    if not routes:
        return
    backoff = 0.1
    while not stop.is_set():
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(*routes)
            backoff = 0.1
            for route in routes.values():
                route("*")
            while not stop.is_set():
                message = await message_unless(pubsub, stop, 1.0)
                if message is not None:
                    routes[message["channel"]](message["data"])
        except (RedisError, OSError) as exc:
            raise_if_cancelling()
            log.warning("nudge listener reconnecting", error=type(exc).__name__)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        await sleep_unless(stop, backoff)
        backoff = min(backoff * 2, 5.0)
