"""Monitor fixtures: a real pool, a manual clock, and engines wired from YAML text."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from redis.asyncio import Redis
from starlette.applications import Starlette

from services.monitor.clock import ManualClock
from services.monitor.collectors import Collected, Collector, Context
from services.monitor.engine import Engine
from services.monitor.lifecycle import Tracker
from services.monitor.notifiers.build import build_notifiers
from services.monitor.notifiers.config import NotifyConfig
from services.monitor.notifiers.dispatcher import Dispatcher
from services.monitor.repository import Repository
from services.monitor.rules.loader import rules_from_data
from services.monitor.sampler import Sampler
from services.monitor.samples import Sample
from services.monitor.store import SeriesStore
from shared import db
from shared.config import MonitorSettings
from shared.db import Pool
from shared.httpserver import bound_port, make_server, wait_started
from shared.queue import JobStore


@pytest.fixture
def settings() -> MonitorSettings:
    return MonitorSettings(monitor_interval=15)


@pytest.fixture
async def pool(settings: MonitorSettings) -> AsyncIterator[Pool]:
    p = await db.create_pool(settings, role="monitor-test")
    yield p
    await p.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_700_000_000.0)


@pytest.fixture
async def ctx(settings: MonitorSettings, pool: Pool, clock: ManualClock) -> AsyncIterator[Context]:
    # The session's Redis database is chosen at start-up; the settings carry it.
    redis = Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=2)
    http = httpx.AsyncClient()
    yield Context(settings, redis, pool, http, clock)
    await http.aclose()
    await redis.aclose()


class StaticCollector:
    """Serves whatever the test puts in ``samples``, or raises ``failure``."""

    def __init__(self, name: str, produces: set[str] | None = None) -> None:
        self.name = name
        self.produces = frozenset(produces or set())
        self.samples: list[Sample] = []
        self.failure: BaseException | None = None

    def set(self, name: str, value: float, **labels: str) -> None:
        self.samples = [s for s in self.samples if not (s.name == name and s.labels == labels)]
        self.samples.append(Sample(name, value, labels))

    def clear(self, name: str | None = None) -> None:
        self.samples = [s for s in self.samples if name is not None and s.name != name]

    async def collect(self, ctx: Context) -> Collected:
        if self.failure is not None:
            raise self.failure
        return Collected(list(self.samples))


def make_engine(
    ctx: Context,
    rules_yaml: str,
    config: dict[str, Any] | None = None,
    collectors: list[Collector] | None = None,
) -> Engine:
    rules = rules_from_data(yaml.safe_load(rules_yaml), "test")
    notify = NotifyConfig.model_validate(config or {"receivers": [{"name": "log", "kind": "log"}]})
    store = SeriesStore(retention=3600)
    sampler = Sampler(collectors or [], ctx, store, timeout=2)
    repo = Repository(ctx.db)
    jobs = JobStore(ctx.redis, status_ttl=3600, idempotency_ttl=3600, shards=4)
    dispatcher = Dispatcher(
        notify, build_notifiers(notify, ctx.http, jobs), repo, sleep=lambda _: asyncio.sleep(0)
    )
    return Engine(rules, sampler, Tracker(), dispatcher, repo, ctx.clock, interval=15)


@pytest.fixture
def engine_factory(ctx: Context) -> Callable[..., Engine]:
    def factory(
        rules_yaml: str,
        config: dict[str, Any] | None = None,
        collectors: list[Collector] | None = None,
    ) -> Engine:
        return make_engine(ctx, rules_yaml, config, collectors)

    return factory


@contextlib.asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[str]:
    """Serve an ASGI app on a free loopback port for the block; yield its base URL."""
    server: uvicorn.Server = make_server(app, "127.0.0.1", 0)
    task = asyncio.create_task(server.serve())
    await wait_started(server, task)
    try:
        yield f"http://127.0.0.1:{bound_port(server)}"
    finally:
        server.should_exit = True
        await task
