"""Collectors: one module per source. Each returns samples (and details for the API),
raises ``SourceAbsent`` when its source does not exist, or raises anything else on
failure; the sampler turns the last two into NoData and Error for the rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
from redis.asyncio import Redis

from services.monitor.clock import Clock
from services.monitor.samples import Sample
from shared.config import MonitorSettings
from shared.db import Pool


class SourceAbsent(Exception):
    """The collector's data source is not there (yet); its rules show NoData."""


@dataclass
class Context:
    """What collectors read from; opened and closed by the monitor process."""

    settings: MonitorSettings
    redis: Redis
    db: Pool
    http: httpx.AsyncClient
    clock: Clock


@dataclass
class Collected:
    samples: list[Sample]
    details: dict[str, Any] = field(default_factory=dict)


class Collector(Protocol):
    name: str
    produces: frozenset[str]  # metric names it emits: lets rules know whom to blame

    async def collect(self, ctx: Context) -> Collected: ...
