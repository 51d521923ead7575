"""Runs every collector each interval and keeps the latest values for /metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from services.monitor import collectors
from services.monitor.collectors import Sample
from shared.logs import get_logger

log = get_logger(__name__)

CollectorFn = Callable[[Redis], Awaitable[list[Sample]]]

COLLECTORS: dict[str, CollectorFn] = {
    "queues": collectors.queues,
    "redis": collectors.redis_info,
    "workers": collectors.workers,
}


class Sampler(Collector):
    """Holds the last good samples of each collector and whether it is failing."""

    def __init__(self, redis: Redis, interval: float) -> None:
        self.redis = redis
        self.interval = interval
        self.samples: dict[str, list[Sample]] = {}
        self.errors: dict[str, str] = {}
        self.last_run: float = 0.0

    async def sample_once(self) -> None:
        for name, fn in COLLECTORS.items():
            try:
                async with asyncio.timeout(self.interval):
                    self.samples[name] = await fn(self.redis)
                self.errors.pop(name, None)
            except Exception as exc:
                self.samples[name] = []
                self.errors[name] = f"{type(exc).__name__}: {exc}"
                log.warning("collector failed", collector=name, error=self.errors[name])
        self.last_run = time.time()

    async def run(self) -> None:
        while True:
            await self.sample_once()
            await asyncio.sleep(self.interval)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families: dict[str, GaugeMetricFamily] = {}
        for samples in self.samples.values():
            for s in samples:
                family = families.get(s.name)
                if family is None:
                    family = GaugeMetricFamily(s.name, s.help, labels=sorted(s.labels))
                    families[s.name] = family
                family.add_metric([s.labels[k] for k in sorted(s.labels)], s.value)
        up = GaugeMetricFamily(
            "tgflow_monitor_collector_up",
            "Whether a collector's last run worked.",
            labels=["collector"],
        )
        for name in COLLECTORS:
            up.add_metric([name], 0.0 if name in self.errors else 1.0)
        yield from families.values()
        yield up
