"""The worker process: consumers per queue, the archiver, the webhook deliverer,
heartbeats and /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable

from arq.connections import ArqRedis
from opentelemetry import trace
from redis.exceptions import RedisError

from services.worker import metrics as metrics_
from services.worker.ai.runtime import open_runtime
from services.worker.archiver import Archiver
from services.worker.consumer import Consumer, functions_for
from services.worker.execute import JobRunner
from services.worker.nudge import listen_for_nudges
from services.worker.shards import (
    CHANGED_CHANNEL,
    ShardManager,
    agree_shard_count,
    shard_consumer_factory,
)
from services.worker.state import WorkerState
from services.worker.tasks import HANDLERS
from services.worker.telegram.recovery import Recovery
from services.worker.telegram.runtime import TelegramRuntime
from services.worker.telegram.upkeep import (
    listen_for_disconnects,
    prune_forever,
    validate_idle_sessions,
)
from services.worker.telegram.vault import settings_vault
from services.worker.webhooks import Deliverer
from shared import db, metrics, registry
from shared.config import WorkerSettings
from shared.heap import freeze_startup_heap
from shared.httpserver import bound_port, health_and_metrics_app, make_server, wait_started
from shared.jobs import REGISTRY, QueueKind, job_types_for
from shared.logs import get_logger, setup_logging
from shared.queue import JobStore, nudge_channel
from shared.redis_client import connection_pool, create_redis
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
        connection_pool(settings.redis_url, socket_connect_timeout=settings.redis_timeout),
        job_serializer=dumps,
        job_deserializer=loads,
    )
    pool = await db.create_pool(settings, role="worker")
    metrics.track_pool(pool, "worker")
    store = JobStore.for_settings(redis, settings)
    tracer = trace.get_tracer("tgflow.worker")
    vault = settings_vault(settings)
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


def build_consumers(state: WorkerState) -> list[Consumer]:
    """Consumers of the unsharded queues (AI, control); Telegram shards come and go."""
    runners = build_runners()
    consumers = []
    for name in state.settings.queue_kinds:
        kind = QueueKind(name)
        if kind is QueueKind.TELEGRAM:
            continue
        if not job_types_for(kind):
            log.info("queue has no job types yet; not consuming", queue=name)
            continue
        functions = functions_for(kind, runners, state.settings)
        consumers.append(
            Consumer(state, kind, functions, concurrency=state.settings.worker_concurrency)
        )
    return consumers


def build_shards(state: WorkerState) -> ShardManager | None:
    """The Telegram shard manager, when this worker serves the Telegram queue."""
    if QueueKind.TELEGRAM.value not in state.settings.queue_kinds:
        return None
    functions = functions_for(QueueKind.TELEGRAM, build_runners(), state.settings)
    slots = asyncio.BoundedSemaphore(state.settings.worker_concurrency)
    shards = ShardManager(state, shard_consumer_factory(state, functions, slots))
    state.telegram.pool.may_connect = shards.may_use
    return shards


def nudge_routes(
    consumers: list[Consumer], shards: ShardManager | None
) -> dict[str, Callable[[str], None]]:
    """Which pub/sub channel wakes what: a queue's consumer, a shard's, or the balancer."""
    routes: dict[str, Callable[[str], None]] = {
        nudge_channel(c.kind): _ignore_message(c.wake) for c in consumers
    }
    if shards is not None:
        routes[nudge_channel(QueueKind.TELEGRAM)] = shards.wake
        routes[CHANGED_CHANNEL] = _ignore_message(shards.poke)
    return routes


def _ignore_message(call: Callable[[], None]) -> Callable[[str], None]:
    return lambda _message: call()


async def serve(settings: WorkerSettings, stop: asyncio.Event) -> None:
    """Run until ``stop`` is set, then drain and close in reverse order of opening."""
    instance_id = settings.instance_name or registry.new_instance_id("worker")
    state = await open_state(settings, instance_id)
    blocking = create_redis(settings, blocking=True)
    consumers = build_consumers(state)
    shards = build_shards(state)
    if shards is not None:
        await agree_shard_count(state.redis, settings.telegram_shards)
    archiver = Archiver(blocking, state.db, instance_id)
    http = make_server(
        health_and_metrics_app(lambda: not stop.is_set()),
        settings.worker_metrics_host,
        settings.worker_metrics_port,
    )
    consuming = [asyncio.create_task(c.run_forever(), name=f"consume-{c.kind}") for c in consumers]
    archiving = asyncio.create_task(archiver.run(), name="archiver")
    delivering = asyncio.create_task(Deliverer(state, blocking, stop).run(), name="webhooks")
    nudges = asyncio.create_task(
        listen_for_nudges(blocking, nudge_routes(consumers, shards), stop), name="nudges"
    )
    pool_care = asyncio.create_task(state.telegram.pool.run_maintenance(stop))
    disconnects = asyncio.create_task(listen_for_disconnects(blocking, state.telegram, stop))
    validation = asyncio.create_task(validate_idle_sessions(state.telegram, stop))
    pruning = asyncio.create_task(prune_forever(state.telegram, stop), name="pruning")
    recovery = asyncio.create_task(Recovery(state.telegram).run(stop), name="recovery")
    counters = asyncio.create_task(state.telegram.run_flush(stop))
    gauges = asyncio.create_task(
        metrics_.sample_queues(
            state.redis,
            settings.queue_kinds,
            settings.telegram_shards,
            stop,
            settings.heartbeat_seconds,
        )
    )
    http_task = asyncio.create_task(http.serve(), name="http")
    await wait_started(http, http_task)
    host = registry.advertised_host(settings.worker_metrics_host)
    metrics_url = f"http://{host}:{bound_port(http)}/metrics"
    queues = [c.kind.value for c in consumers] + (["telegram"] if shards else [])
    started_at = repr(time.time())

    def announcement() -> dict[str, str]:
        fields = {
            "id": instance_id,
            "kind": "worker",
            "queues": ",".join(queues),
            "running": str(len(state.running)),
            "running_ids": ",".join(list(state.running)[:100]),
            "concurrency": str(settings.worker_concurrency),
            "connected": str(len(state.telegram.pool.connected())),
            "metrics_url": metrics_url,
            "started_at": started_at,
        }
        if shards is not None:
            fields["shards"] = str(shards.count)
            fields["held"] = ",".join(map(str, shards.shards()))
        return fields

    beat_stop = asyncio.Event()  # the registry entry goes first on shutdown
    beat = asyncio.create_task(
        registry.heartbeat_forever(
            state.redis,
            instance_id,
            announcement,
            interval=settings.heartbeat_seconds,
            stop=beat_stop,
        )
    )
    shard_stop = asyncio.Event()
    balancing = asyncio.create_task(shards.run(shard_stop)) if shards else None
    if shards is not None:
        with contextlib.suppress(RedisError, OSError):
            await state.redis.publish(CHANGED_CHANNEL, instance_id)
    log.info("worker started", instance=instance_id, metrics=metrics_url, queues=queues)
    await stop.wait()
    log.info("worker stopping", instance=instance_id)
    # Leave the registry first, so the others count us out when they take our shards.
    beat_stop.set()
    await asyncio.gather(beat, return_exceptions=True)
    with contextlib.suppress(RedisError, OSError):
        await registry.withdraw(state.redis, instance_id)
    # Shards are handed off while their leases are still renewed (and fenced if not).
    await asyncio.gather(
        *(c.drain(settings.worker_drain_seconds) for c in consumers),
        *([shards.shutdown(settings.worker_drain_seconds)] if shards else []),
    )
    shard_stop.set()
    if balancing is not None:
        await asyncio.gather(balancing, return_exceptions=True)
    await asyncio.gather(*consuming, return_exceptions=True)
    archiver.stop()  # after the consumers: their last transitions get archived too
    await asyncio.gather(
        archiving,
        delivering,
        nudges,
        gauges,
        pool_care,
        disconnects,
        validation,
        pruning,
        recovery,
        counters,
        return_exceptions=True,
    )
    http.should_exit = True
    await http_task
    await blocking.aclose()
    await close_state(state)
    log.info("worker stopped", instance=instance_id)


def run(settings: WorkerSettings) -> None:
    settings.ensure_safe()
    settings_vault(settings)  # a bad TGFLOW_VAULT_KEYS stops the worker before it starts
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

    freeze_startup_heap()
    try:
        uvloop.run(main())
    finally:
        provider.shutdown()
