"""Shard ownership between workers: balance, hand-off, lost leases and self-fencing.

Managers run in this process against the real Redis; a small TCP relay in front of
Redis lets a test cut one worker off without touching the server the others use.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest
from redis.asyncio import Redis

from services.worker.main import build_shards, close_state, open_state
from services.worker.shards import ShardManager, agree_shard_count
from shared import registry
from shared.config import WorkerSettings
from shared.jobs.routing import shard_lease_key, shard_of
from tests.helpers import eventually

SHARDS = 8


def test_an_account_keeps_its_shard_and_accounts_spread() -> None:
    account = uuid.UUID("0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
    assert shard_of(account, 64) == shard_of(str(account), 64) == 14  # pinned: never moves
    counts = [0] * 64
    for _ in range(6400):
        counts[shard_of(uuid.uuid4(), 64)] += 1
    assert min(counts) > 50  # about 100 each
    assert max(counts) < 150


class Relay:
    """A TCP relay to Redis that can be frozen: bytes stop flowing both ways."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    await self.flowing.wait()
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()


def _settings(redis_url: str, name: str, **extra: object) -> WorkerSettings:
    return WorkerSettings(
        redis_url=redis_url,
        instance_name=name,
        telegram_shards=SHARDS,
        shard_lease_seconds=3,
        shard_handoff_seconds=0.5,
        worker_poll_delay=0.05,
        **extra,  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def manager(settings: WorkerSettings) -> AsyncIterator[ShardManager]:
    """A worker's shard manager, announced in the registry like a serving worker."""
    state = await open_state(settings, settings.instance_name or "w")
    shards = build_shards(state)
    assert shards is not None
    stop = asyncio.Event()
    fields = {"id": state.instance_id, "kind": "worker", "queues": "telegram"}
    await registry.announce(state.redis, state.instance_id, fields, ttl=30)
    running = asyncio.create_task(shards.run(stop))
    try:
        yield shards
    finally:
        with contextlib.suppress(Exception):
            await registry.withdraw(state.redis, state.instance_id)
            await shards.shutdown(0.5)
        stop.set()
        await running
        await close_state(state)


async def test_a_joining_worker_takes_half_by_hand_off_and_no_shard_has_two_owners(
    tgflow_env: dict[str, str], redis: Redis
) -> None:
    url = tgflow_env["TGFLOW_REDIS_URL"]
    async with manager(_settings(url, "wa")) as a:
        await eventually(lambda: _true(len(a.shards()) == SHARDS))
        async with manager(_settings(url, "wb")) as b:

            async def split() -> bool:
                mine, theirs = set(a.shards()), set(b.shards())
                assert not mine & theirs, (mine, theirs)  # never both, at any moment
                return len(mine) == len(theirs) == SHARDS // 2

            await eventually(split, timeout=15)
            owners = {n: await redis.get(shard_lease_key(n)) for n in range(SHARDS)}
            assert {o.split("|")[0] for o in owners.values()} == {"wa", "wb"}
            for n in b.shards():
                assert owners[n].startswith("wb|")
        # b leaves cleanly: a takes everything back at once (released, then re-balanced).
        await eventually(lambda: _true(len(a.shards()) == SHARDS), timeout=10)


async def test_a_lease_taken_over_is_fenced_at_the_next_renewal(
    tgflow_env: dict[str, str], redis: Redis
) -> None:
    async with manager(_settings(tgflow_env["TGFLOW_REDIS_URL"], "wa")) as a:
        await eventually(lambda: _true(len(a.shards()) == SHARDS))
        await redis.set(shard_lease_key(3), "intruder|999999", px=60_000)
        await eventually(lambda: _true(not a.usable(3) and 3 not in a.shards()), timeout=5)
        assert await redis.get(shard_lease_key(3)) == "intruder|999999"  # never deleted by a


async def test_a_worker_cut_off_from_redis_fences_itself_before_its_lease_lapses(
    tgflow_env: dict[str, str], redis: Redis
) -> None:
    parts = urlsplit(tgflow_env["TGFLOW_REDIS_URL"])
    relay = Relay((parts.hostname or "127.0.0.1", parts.port or 6379))
    await relay.start()
    via_relay = urlunsplit(parts._replace(netloc=f"127.0.0.1:{relay.port}"))
    try:
        async with manager(_settings(via_relay, "wa", heartbeat_seconds=30)) as a:
            await eventually(lambda: _true(len(a.shards()) == SHARDS))
            relay.flowing.clear()  # Redis unreachable from a: renewals hang and fail
            cut = time.monotonic()
            await eventually(lambda: _true(not a.shards()), timeout=5, interval=0.01)
            fenced_after = time.monotonic() - cut
            # Fenced while every lease still stands: nobody else could hold them yet.
            ttls = [await redis.pttl(shard_lease_key(n)) for n in range(SHARDS)]
            assert all(t > 0 for t in ttls), ttls
            assert fenced_after < 3.0
            assert not any(a.usable(n) for n in range(SHARDS))
            relay.flowing.set()
            # Reachable again: the leases lapse, and a takes its orphans back.
            await eventually(lambda: _true(len(a.shards()) == SHARDS), timeout=10)
    finally:
        relay.flowing.set()
        await relay.close()


async def test_processes_disagreeing_on_the_shard_count_are_refused(redis: Redis) -> None:
    await agree_shard_count(redis, 64)
    await agree_shard_count(redis, 64)
    with pytest.raises(RuntimeError, match="TGFLOW_TELEGRAM_SHARDS is 16"):
        await agree_shard_count(redis, 16)


async def _true(value: bool) -> bool:
    return value


async def test_the_workers_route_shows_shards_running_jobs_and_heartbeats(
    tgflow_env: dict[str, str],
) -> None:
    from tests.helpers import auth, gateway_client, running_worker, wait_for_status

    operator = auth("ops", scopes=["monitoring:read"])
    async with (
        gateway_client(telegram_shards=SHARDS) as client,
        running_worker(telegram_shards=SHARDS, worker_poll_delay=0.05, heartbeat_seconds=0.2),
    ):
        job = await client.post(
            "/v1/jobs", json={"type": "system.sleep", "params": {"seconds": 1.5}}, headers=auth()
        )
        job_id = job.json()["id"]
        await wait_for_status(client, job_id, {"running"})

        async def listed() -> dict[str, object] | None:
            body: dict[str, object] = (await client.get("/v1/workers", headers=operator)).json()
            workers = body["workers"]
            assert isinstance(workers, list)
            if workers and len(workers[0]["shards"]) == SHARDS and workers[0]["running_jobs"]:
                return body
            return None

        body = await eventually(listed, timeout=10)
        worker = body["workers"][0]  # type: ignore[index]
        assert body["unowned_shards"] == []
        assert body["shard_count"] == SHARDS
        assert worker["running_job_ids"] == [job_id]
        assert set(worker["queues"]) == {"control", "ai", "telegram"}
        assert 0 <= worker["heartbeat_age_seconds"] < 2
        denied = await client.get("/v1/workers", headers=auth())
        assert denied.status_code == 403
        assert denied.json()["error"]["code"] == "insufficient_scope"
