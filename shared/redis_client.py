"""Redis clients: short timeouts for request paths, none for blocking reads.

Commands are packed by hiredis (C) rather than by redis-py's asyncio connection, which
packs every argument in Python: in a busy worker that packing was about 7 % of its CPU.
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import DataError

from shared.config import BaseAppSettings


class _HiredisPacking:
    def pack_command(self, *args: Any) -> list[bytes]:
        # A command name may carry its first arguments ("CONFIG GET"): sent apart.
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:  # None, a bool, a dict...: refused as redis-py refuses them
            raise DataError(str(exc)) from exc


_PACKING: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def hiredis_packing(base: type[AbstractConnection]) -> type[AbstractConnection]:
    """``base`` (TCP, TLS or Unix socket connection) with hiredis packing commands."""
    if base not in _PACKING:
        _PACKING[base] = type(f"Hiredis{base.__name__}", (_HiredisPacking, base), {})
    return _PACKING[base]


def connection_pool(url: str, **options: Any) -> ConnectionPool:
    pool = ConnectionPool.from_url(url, **options)
    pool.connection_class = hiredis_packing(pool.connection_class)
    return pool


def create_redis(settings: BaseAppSettings, *, blocking: bool = False) -> Redis:
    """A decoded-string client; ``blocking`` ones serve XREADGROUP and pub/sub."""
    timeout = None if blocking else settings.redis_timeout
    pool = connection_pool(
        settings.redis_url,
        decode_responses=True,
        socket_connect_timeout=settings.redis_timeout,
        socket_timeout=timeout,
        health_check_interval=30,
        retry_on_timeout=False,
    )
    return Redis.from_pool(pool)  # closed with the client
