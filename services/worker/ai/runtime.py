"""What a worker holds open for AI jobs: the catalogue, one HTTP client, the limiters."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx
from redis.asyncio import Redis

from services.worker.ai import cache, gauges
from services.worker.ai.admission import Admission
from services.worker.ai.client import ChatClient, open_http
from shared.config import WorkerSettings
from shared.db import Pool
from shared.jobs.ai import Catalog, catalog_for
from shared.logs import get_logger

log = get_logger(__name__)

PRUNE_EVERY = 600.0  # seconds between sweeps of expired cache rows, per worker


@dataclass
class AiRuntime:
    settings: WorkerSettings
    catalog: Catalog
    http: httpx.AsyncClient
    client: ChatClient
    admission: Admission
    db: Pool
    _pruned_at: float = field(default_factory=time.monotonic)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _watcher: asyncio.Task[None] | None = None

    def start(self, redis: Redis) -> None:
        """Begin refreshing the breaker and slot gauges from Redis."""
        providers = sorted(self.catalog.providers)
        self._watcher = asyncio.create_task(
            gauges.watch(
                redis,
                self.admission.breaker,
                providers,
                self.settings.heartbeat_seconds,
                self._stop,
            ),
            name="ai-gauges",
        )

    async def aclose(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            await self._watcher
        await self.http.aclose()

    async def prune_cache_now_and_then(self) -> None:
        """Sweep expired cache rows at most every ``PRUNE_EVERY`` seconds."""
        if time.monotonic() - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = time.monotonic()
        removed = await cache.prune(self.db)
        if removed:
            log.info("ai cache pruned", rows=removed)


def open_runtime(settings: WorkerSettings, redis: Redis, db: Pool) -> AiRuntime:
    """Load the catalogue (a bad one stops start-up) and create the shared client."""
    catalog = catalog_for(settings)
    http = open_http(settings.ai_http_max_connections)
    admission = Admission(redis, settings.ai_lease_seconds, settings.ai_slot_wait_seconds)
    log.info("ai providers", providers=sorted(catalog.providers), default=catalog.default)
    runtime = AiRuntime(settings, catalog, http, ChatClient(http), admission, db)
    runtime.start(redis)
    return runtime
