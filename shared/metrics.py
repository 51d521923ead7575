"""Prometheus helpers shared by every process."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.db import Pool


class PoolCollector(Collector):
    """Exposes an asyncpg pool's size, use and limits at scrape time."""

    def __init__(self, pool: Pool, role: str) -> None:
        self.pool = pool
        self.role = role

    def collect(self) -> Iterator[GaugeMetricFamily]:
        size = self.pool.get_size()
        idle = self.pool.get_idle_size()
        for name, doc, value in (
            ("tgflow_db_pool_size", "Connections open in the pool.", size),
            ("tgflow_db_pool_in_use", "Connections checked out of the pool.", size - idle),
            ("tgflow_db_pool_available", "Idle connections in the pool.", idle),
            ("tgflow_db_pool_max", "Pool size limit.", self.pool.get_max_size()),
        ):
            family = GaugeMetricFamily(name, doc, labels=["role"])
            family.add_metric([self.role], value)
            yield family


def register_pool(pool: Pool, role: str) -> PoolCollector:
    collector = PoolCollector(pool, role)
    REGISTRY.register(collector)
    return collector


def render() -> tuple[bytes, str]:
    """The process's metrics in the Prometheus text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
