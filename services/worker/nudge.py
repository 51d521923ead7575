"""Wake idle consumers when a job is enqueued or cancelled (Redis pub/sub)."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.worker.consumer import Consumer
from shared.aio import raise_if_cancelling, sleep_unless
from shared.logs import get_logger
from shared.queue import nudge_channel

log = get_logger(__name__)


async def listen_for_nudges(redis: Redis, consumers: list[Consumer], stop: asyncio.Event) -> None:
    """Forward nudges to their queue's consumer; reconnect with backoff on failure."""
    by_channel = {nudge_channel(c.kind): c for c in consumers}
    if not by_channel:
        return
    backoff = 0.1
    while not stop.is_set():
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(*by_channel)
            backoff = 0.1
            for consumer in consumers:
                consumer.wake()  # anything enqueued while we were not listening
            while not stop.is_set():
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
                    by_channel[message["channel"]].wake()
        except (RedisError, OSError) as exc:
            raise_if_cancelling()
            log.warning("nudge listener reconnecting", error=type(exc).__name__)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        await sleep_unless(stop, backoff)
        backoff = min(backoff * 2, 5.0)
