"""One monitor cycle: collect, evaluate every rule, persist alert changes, notify.

All time comes from the injected clock, so tests run cycles at chosen instants.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector as PromCollector

from services.monitor import metrics
from services.monitor.clock import Clock
from services.monitor.lifecycle import NOTIFIABLE, Alert, AlertState, Tracker
from services.monitor.notifiers.dispatcher import Dispatcher
from services.monitor.repository import Repository
from services.monitor.rules.evaluate import evaluate_rule
from services.monitor.rules.model import Health, Rule, Severity
from services.monitor.sampler import Sampler
from services.monitor.silences import Silence
from shared.aio import sleep_unless
from shared.logs import get_logger

log = get_logger(__name__)
RETENTION_EVERY = 40  # cycles between history clean-ups (10 minutes at 15 s)


@dataclass
class RuleStatus:
    health: Health = Health.OK
    error: str | None = None
    evaluated_at: float | None = None
    duration: float = 0.0
    series: int = 0
    matches: int = 0


class Engine:
    def __init__(
        self,
        rules: list[Rule],
        sampler: Sampler,
        tracker: Tracker,
        dispatcher: Dispatcher,
        repo: Repository,
        clock: Clock,
        *,
        interval: float,
        history_days: int = 30,
        history_max: int = 10_000,
    ) -> None:
        self.rules = rules
        self.sampler = sampler
        self.tracker = tracker
        self.dispatcher = dispatcher
        self.repo = repo
        self.clock = clock
        self.interval = interval
        self.history_days = history_days
        self.history_max = history_max
        self.rule_status = {r.name: RuleStatus() for r in rules}
        self.silences: list[Silence] = []
        self.resolved: dict[uuid.UUID, Alert] = {}  # resolved alerts a receiver still must hear of
        self.lock = asyncio.Lock()
        self.cycles = 0
        self.last_cycle_at: float | None = None
        self.last_eval_seconds = 0.0

    async def start(self) -> None:
        """Restore open alerts, silences and the notification log from Postgres."""
        self.tracker.load(await self.repo.open_alerts())
        self.tracker.retire({r.name for r in self.rules}, self.clock.now())
        await self.dispatcher.load()
        self.silences = await self.repo.silences(since=self.clock.now())
        await self._persist()

    def firing_count(self) -> int:
        return sum(a.state is AlertState.FIRING for a in self.tracker.open.values())

    def evaluate(self, now: float) -> None:
        """Evaluate every rule against the store and advance the alert states."""
        sources = self.sampler.sources()
        store = self.sampler.store
        started = time.perf_counter()
        for rule in self.rules:
            t0 = time.perf_counter()
            result = evaluate_rule(rule, store, sources, now)
            self.tracker.apply(rule, result, now)
            status = self.rule_status[rule.name]
            status.health, status.error, status.evaluated_at = result.health, result.error, now
            status.duration = time.perf_counter() - t0
            status.series, status.matches = result.series, len(result.matches)
        self.last_eval_seconds = time.perf_counter() - started
        metrics.RULE_EVALUATION.observe(self.last_eval_seconds)

    async def _persist(self) -> None:
        changed, deleted = self.tracker.drain()
        for alert in changed:
            if alert.state is AlertState.RESOLVED:
                self.resolved[alert.id] = alert
        try:
            await self.repo.save_alerts(changed, deleted)
        except Exception as exc:
            # Keep the changes for the next cycle: evaluation must go on without Postgres.
            metrics.PERSIST_ERRORS.labels("alerts").inc()
            log.warning("saving alerts failed", error=repr(exc), changes=len(changed))
            for alert in changed:
                self.tracker.changed.setdefault(alert.id, alert)
            self.tracker.deleted |= deleted

    async def _refresh(self, now: float) -> None:
        try:
            self.silences = await self.repo.silences(since=now)
            wanted = self.dispatcher.referenced()
            missing = wanted - self.resolved.keys() - {a.id for a in self.tracker.open.values()}
            for alert in await self.repo.alerts_by_id(missing):
                if alert.state is AlertState.RESOLVED:
                    self.resolved[alert.id] = alert
            self.resolved = {k: v for k, v in self.resolved.items() if k in wanted}
        except Exception as exc:
            metrics.PERSIST_ERRORS.labels("read").inc()
            log.warning("reading monitor state failed", error=repr(exc))

    async def cycle(self) -> None:
        """Collect, evaluate, persist and dispatch, all at one instant of the clock."""
        started = time.perf_counter()
        now = self.clock.now()
        await self.sampler.sample_once(now)
        async with self.lock:
            self.evaluate(now)
            await self._persist()
        await self._refresh(now)
        alerts = [a for a in self.tracker.open.values() if a.state in NOTIFIABLE]
        await self.dispatcher.process(alerts + list(self.resolved.values()), self.silences, now)
        self.sampler.store.prune(now)
        self.cycles += 1
        self.last_cycle_at = now
        if self.cycles % RETENTION_EVERY == 1:
            await self._retention(now)
        metrics.CYCLE.observe(time.perf_counter() - started)

    async def _retention(self, now: float) -> None:
        try:
            deleted = await self.repo.apply_retention(now, self.history_days, self.history_max)
        except Exception as exc:
            metrics.PERSIST_ERRORS.labels("retention").inc()
            log.warning("history retention failed", error=repr(exc))
            return
        horizon = now - self.history_days * 86_400
        entries = self.dispatcher.entries
        self.dispatcher.entries = {
            k: e for k, e in entries.items() if e.firing or e.sent_at >= horizon
        }
        if deleted:
            log.info("alert history trimmed", deleted=deleted)

    async def run(self, stop: asyncio.Event) -> None:
        """Cycle every interval until ``stop`` is set; a failing cycle is logged, not fatal."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self.cycle()
            except Exception:
                log.exception("monitor cycle failed")
            if await sleep_unless(stop, max(0.0, self.interval - (time.monotonic() - started))):
                return


class EngineMetrics(PromCollector):
    """Alert counts by state and severity, and rule health, read at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        alerts = GaugeMetricFamily(
            "tgflow_alerts", "Open alerts by state and severity.", labels=["state", "severity"]
        )
        counts = {
            (s.value, v.value): 0
            for s in AlertState
            if s is not AlertState.RESOLVED
            for v in Severity
        }
        for alert in self.engine.tracker.open.values():
            key = (alert.state.value, alert.severity)
            counts[key] = counts.get(key, 0) + 1
        for (state, severity), n in sorted(counts.items()):
            alerts.add_metric([state, severity], n)
        rules = GaugeMetricFamily(
            "tgflow_monitor_rules", "Rules by last health.", labels=["health"]
        )
        health = {h.value: 0 for h in Health}
        for status in self.engine.rule_status.values():
            health[status.health.value] += 1
        for name, n in health.items():
            rules.add_metric([name], n)
        now = self.engine.clock.now()
        silences = GaugeMetricFamily("tgflow_monitor_silences_active", "Silences in force now.")
        silences.add_metric([], sum(s.state(now) == "active" for s in self.engine.silences))
        yield alerts
        yield rules
        yield silences
