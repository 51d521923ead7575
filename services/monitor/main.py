"""The monitor process: collect, evaluate rules, keep alerts, notify; serve its API."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import httpx
from prometheus_client import REGISTRY

from services.monitor.app import build_app
from services.monitor.clock import Clock, SystemClock
from services.monitor.collectors import Context
from services.monitor.collectors.all import default_collectors
from services.monitor.engine import Engine, EngineMetrics
from services.monitor.lifecycle import AlertState, Tracker
from services.monitor.notifiers.build import build_notifiers
from services.monitor.notifiers.config import load_config
from services.monitor.notifiers.dispatcher import Dispatcher
from services.monitor.repository import Repository
from services.monitor.rules.loader import RuleLoadError, load_rules
from services.monitor.sampler import Sampler
from services.monitor.store import SeriesStore
from shared import db, metrics, registry
from shared.config import MonitorSettings
from shared.heap import freeze_startup_heap
from shared.httpserver import bound_port, make_server, wait_started
from shared.logs import get_logger, setup_logging
from shared.queue import JobStore
from shared.redis_client import create_redis
from shared.telemetry import setup_sentry

log = get_logger(__name__)
MIN_HISTORY = 900.0  # keep at least 15 minutes of samples for the API's statistics


def build_engine(
    settings: MonitorSettings,
    ctx: Context,
    jobs: JobStore,
) -> Engine:
    """Wire rules, collectors, the state machine and the dispatcher (no I/O)."""
    rules = load_rules(settings.monitor_rules_path)
    config = load_config(settings.monitor_config_path)
    longest = max((r.expr.window or 0.0 for r in rules), default=0.0)
    store = SeriesStore(retention=max(longest, MIN_HISTORY) + 2 * settings.monitor_interval)
    tracker = Tracker()

    def firing() -> int:
        return sum(a.state is AlertState.FIRING for a in tracker.open.values())

    sampler = Sampler(
        default_collectors(settings, firing),
        ctx,
        store,
        timeout=max(1.0, min(settings.monitor_interval * 0.8, 10.0)),
    )
    repo = Repository(ctx.db)
    dispatcher = Dispatcher(config, build_notifiers(config, ctx.http, jobs), repo)
    return Engine(
        rules,
        sampler,
        tracker,
        dispatcher,
        repo,
        ctx.clock,
        interval=settings.monitor_interval,
        history_days=settings.monitor_history_days,
        history_max=settings.monitor_history_max,
    )


async def serve(settings: MonitorSettings, stop: asyncio.Event, clock: Clock | None = None) -> None:
    instance_id = settings.instance_name or registry.new_instance_id("monitor")
    redis = create_redis(settings)
    pool = await db.create_pool(settings, role="monitor")
    metrics.track_pool(pool, "monitor")
    http = httpx.AsyncClient()
    jobs = JobStore.for_settings(redis, settings)
    ctx = Context(settings, redis, pool, http, clock or SystemClock())
    try:
        engine = build_engine(settings, ctx, jobs)
        await engine.start()
        await _run(settings, engine, instance_id, stop)
    finally:
        await http.aclose()
        metrics.untrack_pool("monitor")
        await pool.close()
        await redis.aclose()


async def _run(
    settings: MonitorSettings, engine: Engine, instance_id: str, stop: asyncio.Event
) -> None:
    extra = EngineMetrics(engine)
    REGISTRY.register(engine.sampler)
    REGISTRY.register(extra)
    server = make_server(build_app(engine, settings), settings.monitor_host, settings.monitor_port)
    server_task = asyncio.create_task(server.serve())
    try:
        await wait_started(server, server_task)
        url = f"http://{registry.advertised_host(settings.monitor_host)}:{bound_port(server)}"
        beat = asyncio.create_task(
            registry.heartbeat_forever(
                engine.sampler.ctx.redis,
                instance_id,
                lambda: {
                    "id": instance_id,
                    "kind": "monitor",
                    "url": url,
                    "metrics_url": url + "/metrics",
                },
                interval=5.0,
                stop=stop,
            )
        )
        cycles = asyncio.create_task(engine.run(stop))
        log.info("monitor started", instance=instance_id, url=url, rules=len(engine.rules))
        await stop.wait()
        await asyncio.gather(beat, cycles, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):  # deliveries under way get a moment to finish
                await engine.dispatcher.idle()
    finally:
        server.should_exit = True
        await server_task
        REGISTRY.unregister(extra)
        REGISTRY.unregister(engine.sampler)
        with contextlib.suppress(Exception):
            await registry.withdraw(engine.sampler.ctx.redis, instance_id)
        log.info("monitor stopped", instance=instance_id)


def run(settings: MonitorSettings) -> None:
    settings.ensure_safe()
    setup_logging(settings.log_level, json=settings.log_json, service="monitor")
    setup_sentry(settings, "monitor")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    import uvloop

    freeze_startup_heap()
    try:
        uvloop.run(main())
    except RuleLoadError as exc:  # a broken rule or notification file: say so, exit non-zero
        log.error("monitor configuration does not load", error=str(exc))
        raise SystemExit(2) from None
