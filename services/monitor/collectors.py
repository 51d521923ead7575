"""Samplers: each returns the current values of a few gauges, or raises."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from shared import registry
from shared.jobs import QueueKind, queue_key


@dataclass(frozen=True)
class Sample:
    name: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)
    help: str = ""


async def queues(redis: Redis) -> list[Sample]:
    """Depth of each queue (waiting plus running) and how overdue its oldest due job is."""
    now_ms = time.time() * 1000
    out: list[Sample] = []
    for kind in QueueKind:
        key = queue_key(kind)
        async with redis.pipeline(transaction=False) as pipe:
            pipe.zcard(key)
            pipe.zrange(key, 0, 0, withscores=True)
            depth, oldest = await pipe.execute()
        age = max(0.0, (now_ms - oldest[0][1]) / 1000) if oldest else 0.0
        labels = {"queue": kind.value}
        out.append(Sample("tgflow_queue_depth", depth, labels, "Jobs in the queue."))
        out.append(
            Sample("tgflow_queue_oldest_age_seconds", age, labels, "Age of the oldest due job.")
        )
    return out


_REDIS_FIELDS = {
    "used_memory": ("tgflow_redis_used_memory_bytes", "Memory Redis uses."),
    "maxmemory": ("tgflow_redis_maxmemory_bytes", "Redis memory limit (0 = none)."),
    "connected_clients": ("tgflow_redis_connected_clients", "Clients connected to Redis."),
    "instantaneous_ops_per_sec": ("tgflow_redis_ops_per_second", "Redis commands per second."),
    "keyspace_hits": ("tgflow_redis_keyspace_hits", "Lookups that found a key."),
    "keyspace_misses": ("tgflow_redis_keyspace_misses", "Lookups that found no key."),
    "evicted_keys": ("tgflow_redis_evicted_keys", "Keys evicted for memory."),
}


async def redis_info(redis: Redis) -> list[Sample]:
    info: dict[str, Any] = await redis.info()
    out = [Sample("tgflow_redis_up", 1.0, {}, "Redis answered INFO.")]
    for key, (name, doc) in _REDIS_FIELDS.items():
        if key in info:
            out.append(Sample(name, float(info[key]), {}, doc))
    hits, misses = float(info.get("keyspace_hits", 0)), float(info.get("keyspace_misses", 0))
    if hits + misses:
        out.append(Sample("tgflow_redis_hit_ratio", hits / (hits + misses), {}, "Hit ratio."))
    return out


async def workers(redis: Redis) -> list[Sample]:
    """Live workers and how long ago each last beat."""
    now = time.time()
    live = await registry.live_instances(redis, "worker")
    out = [Sample("tgflow_workers_live", float(len(live)), {}, "Workers with a fresh heartbeat.")]
    for w in live:
        age = max(0.0, now - float(w.get("heartbeat_at", now)))
        out.append(
            Sample(
                "tgflow_worker_heartbeat_age_seconds",
                age,
                {"worker": w.get("id", "?")},
                "Seconds since the worker's last heartbeat.",
            )
        )
    return out
