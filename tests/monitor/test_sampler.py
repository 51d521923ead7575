"""The monitor's collectors against the real Redis, and a failing collector."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from services.monitor.app import build_app
from services.monitor.sampler import Sampler
from shared import registry
from tests.conftest import REDIS_URL


def values(sampler: Sampler) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for samples in sampler.samples.values()
        for s in samples
    }


async def test_samples_queues_redis_and_workers(redis: Redis) -> None:
    await redis.zadd("tgflow:queue:control", {"a": 1, "b": 2, "c": 3})
    await registry.announce(redis, "worker-1", {"id": "worker-1", "kind": "worker"}, ttl=10)
    client = Redis.from_url(REDIS_URL, decode_responses=True)
    sampler = Sampler(client, interval=1.0)
    try:
        await sampler.sample_once()
    finally:
        await client.aclose()
    got = values(sampler)
    assert got[("tgflow_queue_depth", (("queue", "control"),))] == 3
    assert got[("tgflow_queue_depth", (("queue", "ai"),))] == 0
    assert got[("tgflow_queue_oldest_age_seconds", (("queue", "control"),))] > 1e6
    assert got[("tgflow_workers_live", ())] == 1
    assert got[("tgflow_redis_up", ())] == 1
    assert sampler.errors == {}


async def test_failing_collector_is_visible_not_silent() -> None:
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    sampler = Sampler(dead, interval=1.0)
    try:
        await sampler.sample_once()
    finally:
        await dead.aclose()
    assert set(sampler.errors) == {"queues", "redis", "workers"}
    families = {f.name: f for f in sampler.collect()}
    up = {s.labels["collector"]: s.value for s in families["tgflow_monitor_collector_up"].samples}
    assert up == {"queues": 0.0, "redis": 0.0, "workers": 0.0}
    import httpx

    transport = httpx.ASGITransport(app=build_app(sampler))
    async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
        body: dict[str, Any] = (await client.get("/v1/samples")).json()
    assert "ConnectionError" in body["errors"]["redis"]
