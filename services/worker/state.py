"""Typed resources of a worker process, handed to every job through the ARQ ctx."""

from __future__ import annotations

from dataclasses import dataclass, field

from arq.connections import ArqRedis
from opentelemetry.trace import Tracer
from redis.asyncio import Redis

from services.worker.ai.runtime import AiRuntime
from services.worker.telegram.runtime import TelegramRuntime
from shared.config import WorkerSettings
from shared.db import Pool
from shared.queue import JobStore


@dataclass
class WorkerState:
    settings: WorkerSettings
    instance_id: str
    redis: Redis
    arq: ArqRedis
    db: Pool
    jobs: JobStore
    tracer: Tracer
    telegram: TelegramRuntime
    running: dict[str, str] = field(default_factory=dict)  # job id -> type
    ai: AiRuntime | None = None
