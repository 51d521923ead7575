"""Redis clients: short timeouts for request paths, none for blocking reads."""

from __future__ import annotations

from redis.asyncio import Redis

from shared.config import BaseAppSettings


def create_redis(settings: BaseAppSettings, *, blocking: bool = False) -> Redis:
    """A decoded-string client; ``blocking`` ones serve XREADGROUP and pub/sub."""
    timeout = None if blocking else settings.redis_timeout
    client: Redis = Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_connect_timeout=settings.redis_timeout,
        socket_timeout=timeout,
        health_check_interval=30,
        retry_on_timeout=False,
    )
    return client
