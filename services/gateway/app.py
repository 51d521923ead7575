"""The gateway: auth, validation, idempotent enqueue and job reads over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from redis.exceptions import RedisError

from services.gateway import errors
from services.gateway.middleware import BodyLimit, Metrics, ServerSpans
from services.gateway.routes import (
    accounts,
    ai,
    batch,
    deadletters,
    events,
    health,
    jobs,
    monitoring,
    telegram,
    webhooks,
    workers,
)
from services.gateway.state import GatewayState
from shared import db, metrics, registry
from shared.config import GatewaySettings
from shared.jobs import REGISTRY
from shared.logs import get_logger
from shared.queue import JobStore
from shared.redis_client import create_redis
from shared.text import RefuseControlCharacters

log = get_logger(__name__)


def end_streams(app: FastAPI) -> None:
    """Make open job event streams end (within a second), ahead of a shutdown: uvicorn
    waits for open responses before it runs the lifespan's shutdown."""
    state: GatewayState | None = getattr(app.state, "tgflow", None)
    if state is not None:
        state.closing = True


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: GatewaySettings = app.state.settings
    instance_id = settings.instance_name or registry.new_instance_id("gateway")
    redis = create_redis(settings)
    pool = await db.create_pool(settings, role="gateway", read_only=True)
    metrics.track_pool(pool, "gateway")
    store = JobStore.for_settings(redis, settings)
    monitor = monitoring.monitor_client(
        settings.monitor_url, settings.monitor_timeout, settings.monitor_api_key()
    )
    state = GatewayState(settings, redis, pool, store, instance_id, monitor)
    state.events = create_redis(settings, blocking=True)
    app.state.tgflow = state
    url = f"http://{registry.advertised_host(settings.gateway_host)}:{settings.gateway_port}"
    stop = asyncio.Event()
    beat = asyncio.create_task(
        registry.heartbeat_forever(
            redis,
            instance_id,
            lambda: {
                "id": instance_id,
                "kind": "gateway",
                "url": url,
                "metrics_url": url + "/metrics",
            },
            interval=5.0,
            stop=stop,
        )
    )
    log.info("gateway started", instance=instance_id)
    try:
        yield
    finally:
        state.closing = True
        stop.set()
        await beat
        with contextlib.suppress(RedisError, OSError):
            await registry.withdraw(redis, instance_id)
        await monitor.aclose()
        await state.events.aclose()
        metrics.untrack_pool("gateway")
        await pool.close()
        await redis.aclose()
        log.info("gateway stopped", instance=instance_id)


def create_app(settings: GatewaySettings) -> FastAPI:
    """Build the ASGI app; connections open in the lifespan, not here."""
    app = FastAPI(
        title="tgflow",
        version="0.1.0",
        summary="Telegram user-account and AI jobs as durable background work.",
        lifespan=lifespan,
        # Request spans come from ServerSpans (middleware.py); FastAPI's own telemetry
        # would add a second span, metrics and log hooks to every request.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.settings = settings
    app.include_router(health.router)
    app.include_router(batch.router)
    app.include_router(jobs.router)
    app.include_router(deadletters.router)
    app.include_router(events.router)
    app.include_router(webhooks.router)
    app.include_router(ai.router)
    app.include_router(accounts.router)
    app.include_router(telegram.router)
    app.include_router(monitoring.router)
    app.include_router(workers.router)
    errors.install(app, tags=set(REGISTRY))
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(RefuseControlCharacters)
    app.add_middleware(Metrics)
    app.add_middleware(ServerSpans)
    return app
