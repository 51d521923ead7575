"""Prometheus helpers shared by every process."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.db import Pool


class _PoolCollector(Collector):
    """Exposes each tracked asyncpg pool's size, use and limit at scrape time."""

    def __init__(self) -> None:
        self.pools: dict[str, Pool] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = [
            GaugeMetricFamily("tgflow_db_pool_size", "Connections open.", labels=["role"]),
            GaugeMetricFamily("tgflow_db_pool_in_use", "Connections checked out.", labels=["role"]),
            GaugeMetricFamily("tgflow_db_pool_available", "Idle connections.", labels=["role"]),
            GaugeMetricFamily("tgflow_db_pool_max", "Pool size limit.", labels=["role"]),
            GaugeMetricFamily(
                "tgflow_db_pool_waiters", "Tasks waiting for a connection.", labels=["role"]
            ),
        ]
        for role, pool in self.pools.items():
            size, idle = pool.get_size(), pool.get_idle_size()
            values = (size, size - idle, idle, pool.get_max_size(), waiters(pool))
            for family, value in zip(families, values, strict=True):
                family.add_metric([role], value)
        yield from families


def waiters(pool: Pool) -> int:
    """Tasks blocked in ``acquire``.

    asyncpg has no public counter for this; its pool hands connections out through an
    asyncio queue, whose pending getters are exactly the waiters. 0 if that changes.
    """
    getters = getattr(getattr(pool, "_queue", None), "_getters", None)
    return sum(1 for g in getters if not g.done()) if getters is not None else 0


_POOLS = _PoolCollector()
REGISTRY.register(_POOLS)


def track_pool(pool: Pool, role: str) -> None:
    _POOLS.pools[role] = pool


def untrack_pool(role: str) -> None:
    _POOLS.pools.pop(role, None)


def render() -> tuple[bytes, str]:
    """The process's metrics in the Prometheus text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
