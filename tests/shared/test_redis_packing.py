"""Commands packed by hiredis are byte for byte what redis-py would send."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import DataError

from shared.config import WorkerSettings
from shared.redis_client import connection_pool, create_redis, hiredis_packing

COMMANDS = [
    ("SET", "key", "välue ✓", "PX", 1500),
    ("CONFIG GET", "maxmemory"),
    (b"HSET", b"tgflow:job:1", "status", "done", "at", 1763762000123456, "score", 0.1),
    ("ZADD", "queue", -2.5e-7, "job"),
    ("EVAL", "return 1", 0),
]


@pytest.mark.parametrize("command", COMMANDS)
def test_hiredis_packs_what_redis_py_packs(command: tuple[object, ...]) -> None:
    plain = Connection()
    fast = hiredis_packing(Connection)()
    assert b"".join(fast.pack_command(*command)) == b"".join(plain.pack_command(*command))


def test_bad_arguments_are_refused_as_redis_py_refuses_them() -> None:
    fast = hiredis_packing(Connection)()
    for bad in (True, None, {"a": 1}):
        with pytest.raises(DataError):
            fast.pack_command("SET", "key", bad)


def test_every_kind_of_connection_keeps_its_own_class() -> None:
    assert issubclass(hiredis_packing(UnixDomainSocketConnection), UnixDomainSocketConnection)
    assert hiredis_packing(Connection) is hiredis_packing(Connection)
    pool = connection_pool("unix:///tmp/redis.sock")
    assert issubclass(pool.connection_class, UnixDomainSocketConnection)


async def test_a_client_round_trips_through_it() -> None:
    client = create_redis(WorkerSettings())
    try:
        assert client.connection_pool.connection_class.__name__.startswith("Hiredis")
        await client.set("tgflow:packing", "välue ✓", px=5000)
        assert await client.get("tgflow:packing") == "välue ✓"
        async with client.pipeline(transaction=True) as pipe:
            pipe.hset("tgflow:packing:h", mapping={"a": 1, "b": 0.5, "c": "x y"})
            pipe.hgetall("tgflow:packing:h")
            _, stored = await pipe.execute()
        assert stored == {"a": "1", "b": "0.5", "c": "x y"}
    finally:
        await client.aclose()
