"""Runs every collector each cycle, feeds the series store, and keeps each collector's
state visible: ok, absent (its source does not exist) or error."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector as PromCollector

from services.monitor.collectors import Collected, Collector, Context, SourceAbsent
from services.monitor.rules.evaluate import Sources
from services.monitor.samples import Sample
from services.monitor.store import SeriesStore
from shared.logs import get_logger

log = get_logger(__name__)


@dataclass
class CollectorStatus:
    state: str = "never"  # never | ok | absent | error
    error: str | None = None
    duration: float = 0.0
    last_run_at: float | None = None
    last_ok_at: float | None = None
    series: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "error": self.error,
            "duration_seconds": round(self.duration, 4),
            "last_run_at": self.last_run_at,
            "last_ok_at": self.last_ok_at,
            "series": self.series,
        }


class Sampler(PromCollector):
    """Holds each collector's latest samples, details and status."""

    def __init__(
        self, collectors: Sequence[Collector], ctx: Context, store: SeriesStore, timeout: float
    ) -> None:
        self.collectors = list(collectors)
        self.ctx = ctx
        self.store = store
        self.timeout = timeout
        self.latest: dict[str, list[Sample]] = {}
        self.details: dict[str, dict[str, Any]] = {}
        self.status: dict[str, CollectorStatus] = {c.name: CollectorStatus() for c in collectors}
        self.produces = {name: c.name for c in collectors for name in c.produces}
        self.last_run: float | None = None

    async def _run(self, collector: Collector) -> tuple[Collected | BaseException, float]:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                outcome: Collected | BaseException = await collector.collect(self.ctx)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            outcome = exc
        return outcome, time.perf_counter() - started

    async def sample_once(self, now: float) -> None:
        """Run all collectors concurrently and record their outcomes at time ``now``."""
        results = await asyncio.gather(*(self._run(c) for c in self.collectors))
        for collector, (outcome, took) in zip(self.collectors, results, strict=True):
            status = self.status[collector.name]
            status.last_run_at, status.duration = now, took
            if isinstance(outcome, Collected):
                self._ok(collector.name, outcome, now)
            else:
                self._failed(collector.name, outcome, now)
        self.last_run = now

    def _ok(self, name: str, outcome: Collected, now: float) -> None:
        status = self.status[name]
        self.store.ingest(name, outcome.samples, now)
        self.latest[name] = outcome.samples
        self.details[name] = outcome.details
        status.state, status.error, status.last_ok_at = "ok", None, now
        status.series = len(outcome.samples)

    def _failed(self, name: str, exc: BaseException, now: float) -> None:
        status = self.status[name]
        self.store.mark_failed(name, now)
        self.latest[name] = []
        self.details[name] = {}
        status.series = 0
        if isinstance(exc, SourceAbsent):
            status.state, status.error = "absent", str(exc)
            return
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if isinstance(exc, TimeoutError):
            message = f"timed out after {self.timeout:g}s"
        if status.state != "error" or status.error != message:
            log.warning("collector failed", collector=name, error=message)
        status.state, status.error = "error", message

    def sources(self) -> Sources:
        failed = {n: s.error or "" for n, s in self.status.items() if s.state == "error"}
        absent = {n: s.error or "" for n, s in self.status.items() if s.state == "absent"}
        return Sources(failed=failed, absent=absent, produces=self.produces)

    @property
    def errors(self) -> dict[str, str]:
        return {n: s.error or "" for n, s in self.status.items() if s.state == "error"}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Re-export the collected (not scraped) series, and each collector's state."""
        families: dict[str, GaugeMetricFamily] = {}
        for name, samples in self.latest.items():
            produced = next(c.produces for c in self.collectors if c.name == name)
            for s in samples:
                if s.name not in produced:
                    continue
                family = families.get(s.name)
                if family is None:
                    family = GaugeMetricFamily(s.name, s.help or s.name, labels=sorted(s.labels))
                    families[s.name] = family
                family.add_metric([s.labels[k] for k in sorted(s.labels)], s.value)
        up = GaugeMetricFamily(
            "tgflow_monitor_collector_up",
            "Whether a collector's last run worked.",
            labels=["collector"],
        )
        present = GaugeMetricFamily(
            "tgflow_monitor_collector_source_present",
            "Whether a collector's data source exists.",
            labels=["collector"],
        )
        took = GaugeMetricFamily(
            "tgflow_monitor_collector_duration_seconds",
            "How long a collector's last run took.",
            labels=["collector"],
        )
        for name, status in self.status.items():
            up.add_metric([name], 0.0 if status.state == "error" else 1.0)
            present.add_metric([name], 0.0 if status.state == "absent" else 1.0)
            took.add_metric([name], status.duration)
        yield from families.values()
        yield from (up, present, took)
