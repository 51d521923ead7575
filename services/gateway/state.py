"""What the gateway holds open for its lifetime."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from redis.asyncio import Redis

from shared.auth import TokenVerifier
from shared.config import GatewaySettings
from shared.db import Pool
from shared.queue import JobStore


@dataclass
class GatewayState:
    settings: GatewaySettings
    redis: Redis
    db: Pool
    jobs: JobStore
    instance_id: str
    monitor: httpx.AsyncClient | None = None
    events: Redis | None = None  # pub/sub for job event streams (no read timeout)
    streams: int = 0  # job event streams open now
    closing: bool = False  # shutting down: open event streams end
    tokens: TokenVerifier = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = TokenVerifier(self.settings.secret_key.get_secret_value())
