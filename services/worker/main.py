"""The worker process: consumers per queue, the archiver, the webhook deliverer,
heartbeats and /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from arq.connections import ArqRedis
from opentelemetry import trace
from redis.asyncio import ConnectionPool
from redis.exceptions import RedisError

from services.worker import metrics as metrics_
from services.worker.ai.runtime import open_runtime
from services.worker.archiver import Archiver
from services.worker.consumer import Consumer, functions_for
from services.worker.execute import JobRunner
from services.worker.nudge import listen_for_nudges
from services.worker.state import WorkerState
from services.worker.tasks import HANDLERS
from services.worker.telegram.runtime import TelegramRuntime
from services.worker.telegram.upkeep import listen_for_disconnects, validate_idle_sessions
from services.worker.telegram.vault import vault_from_settings
from services.worker.webhooks import Deliverer
from shared import db, metrics, registry
from shared.config import WorkerSettings
from shared.httpserver import bound_port, health_and_metrics_app, make_server, wait_started
from shared.jobs import REGISTRY, QueueKind, job_types_for
from shared.logs import get_logger, setup_logging
from shared.queue import JobStore
from shared.redis_client import create_redis
from shared.serialization import dumps, loads
from shared.telemetry import setup_sentry, setup_tracing

log = get_logger(__name__)


def build_runners() -> dict[str, JobRunner]:
    """Pair every declared job type with its handler; a missing one stops start-up."""
    missing = sorted(set(REGISTRY) - set(HANDLERS))
    if missing:
        raise RuntimeError(f"job types without a handler: {', '.join(missing)}")
    return {name: JobRunner(REGISTRY[name], HANDLERS[name]) for name in REGISTRY}


async def open_state(settings: WorkerSettings, instance_id: str) -> WorkerState:
    if settings.migrate_on_start:
        await db.migrate(settings.database_url)
    redis = create_redis(settings)
    arq_pool = ArqRedis(
        ConnectionPool.from_url(settings.redis_url, socket_connect_timeout=settings.redis_timeout),
        job_serializer=dumps,
        job_deserializer=loads,
    )
    pool = await db.create_pool(settings, role="worker")
    metrics.track_pool(pool, "worker")
    store = JobStore(
        redis, status_ttl=settings.job_status_ttl, idempotency_ttl=settings.idempotency_ttl
    )
    tracer = trace.get_tracer("tgflow.worker")
    vault = vault_from_settings(
        settings.vault_keys.get_secret_value() if settings.vault_keys else None,
        settings.secret_key.get_secret_value(),
    )
    telegram = TelegramRuntime(settings, pool, redis, vault, instance_id)
    state = WorkerState(settings, instance_id, redis, arq_pool, pool, store, tracer, telegram)
    state.ai = open_runtime(settings, redis, pool)
    return state


async def close_state(state: WorkerState) -> None:
    if state.ai is not None:
        await state.ai.aclose()
    await state.telegram.close()
    metrics.untrack_pool("worker")
    await state.db.close()
    await state.arq.aclose()
    await state.arq.connection_pool.disconnect()  # a pool passed in is not closed by aclose
    await state.redis.aclose()


def build_consumers(state: WorkerState, *, burst: bool = False) -> list[Consumer]:
    runners = build_runners()
    consumers = []
    for name in state.settings.queue_kinds:
        kind = QueueKind(name)
        if not job_types_for(kind):
            log.info("queue has no job types yet; not consuming", queue=name)
            continue
        functions = functions_for(kind, runners, grace=state.settings.worker_drain_seconds)
        consumers.append(
            Consumer(
                state, kind, functions, concurrency=state.settings.worker_concurrency, burst=burst
            )
        )
    return consumers


async def serve(settings: WorkerSettings, stop: asyncio.Event) -> None:
    """Run until ``stop`` is set, then drain and close in reverse order of opening."""
    instance_id = settings.instance_name or registry.new_instance_id("worker")
    state = await open_state(settings, instance_id)
    blocking = create_redis(settings, blocking=True)
    consumers = build_consumers(state)
    archiver = Archiver(blocking, state.db, instance_id)
    http = make_server(
        health_and_metrics_app(lambda: not stop.is_set()),
        settings.worker_metrics_host,
        settings.worker_metrics_port,
    )
    consuming = [asyncio.create_task(c.run_forever(), name=f"consume-{c.kind}") for c in consumers]
    archiving = asyncio.create_task(archiver.run(), name="archiver")
    delivering = asyncio.create_task(Deliverer(state, blocking, stop).run(), name="webhooks")
    nudges = asyncio.create_task(listen_for_nudges(blocking, consumers, stop), name="nudges")
    pool_care = asyncio.create_task(state.telegram.pool.run_maintenance(stop))
    disconnects = asyncio.create_task(listen_for_disconnects(blocking, state.telegram, stop))
    validation = asyncio.create_task(validate_idle_sessions(state.telegram, stop))
    counters = asyncio.create_task(state.telegram.run_flush(stop))
    gauges = asyncio.create_task(
        metrics_.sample_queues(state.redis, settings.queue_kinds, stop, settings.heartbeat_seconds)
    )
    http_task = asyncio.create_task(http.serve(), name="http")
    await wait_started(http, http_task)
    host = registry.advertised_host(settings.worker_metrics_host)
    metrics_url = f"http://{host}:{bound_port(http)}/metrics"
    beat = asyncio.create_task(
        registry.heartbeat_forever(
            state.redis,
            instance_id,
            lambda: {
                "id": instance_id,
                "kind": "worker",
                "queues": ",".join(c.kind.value for c in consumers),
                "running": str(len(state.running)),
                "concurrency": str(settings.worker_concurrency),
                "metrics_url": metrics_url,
            },
            interval=settings.heartbeat_seconds,
            stop=stop,
        )
    )
    log.info(
        "worker started",
        instance=instance_id,
        metrics=metrics_url,
        queues=[c.kind.value for c in consumers],
    )
    await stop.wait()
    log.info("worker stopping", instance=instance_id)
    await asyncio.gather(*(c.drain(settings.worker_drain_seconds) for c in consumers))
    await asyncio.gather(*consuming, return_exceptions=True)
    archiver.stop()  # after the consumers: their last transitions get archived too
    await asyncio.gather(
        archiving,
        delivering,
        nudges,
        beat,
        gauges,
        pool_care,
        disconnects,
        validation,
        counters,
        return_exceptions=True,
    )
    with contextlib.suppress(RedisError, OSError):
        await registry.withdraw(state.redis, instance_id)
    http.should_exit = True
    await http_task
    await blocking.aclose()
    await close_state(state)
    log.info("worker stopped", instance=instance_id)


def run(settings: WorkerSettings) -> None:
    settings.ensure_safe()
    setup_logging(settings.log_level, json=settings.log_json, service="worker")
    setup_sentry(settings, "worker")
    provider = setup_tracing(settings, "worker", settings.instance_name or "worker")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    import uvloop

    try:
        uvloop.run(main())
    finally:
        provider.shutdown()
