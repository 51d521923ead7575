"""The usage ledger: tokens and cost per answered attempt, written with the cache entry."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from shared.db import Pool

_INSERT = """
INSERT INTO ai_usage (tenant_id, job_id, attempt, provider, model, prompt_tokens,
                      completion_tokens, cost, cached)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (job_id, attempt) DO NOTHING
"""

# The ledger row and the cache entry in one statement: one round trip, one transaction.
_INSERT_AND_CACHE = (
    "WITH ledger AS ("
    + _INSERT
    + """)
INSERT INTO ai_cache (key, provider, model, answer, expires_at)
VALUES ($10, $4, $5, $11, now() + make_interval(secs => $12))
ON CONFLICT (key) DO UPDATE SET answer = EXCLUDED.answer, created_at = now(),
    expires_at = EXCLUDED.expires_at
"""
)


@dataclass(frozen=True)
class UsageRow:
    tenant: str
    job_id: str
    attempt: int
    provider: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    cached: bool

    def args(self) -> tuple[Any, ...]:
        return (
            self.tenant,
            uuid.UUID(self.job_id),
            self.attempt,
            self.provider,
            self.model,
            self.prompt_tokens,
            self.completion_tokens,
            Decimal(repr(self.cost)),
            self.cached,
        )


@dataclass(frozen=True)
class CacheEntry:
    key: str
    answer: dict[str, Any]
    ttl_seconds: int


async def record(db: Pool, row: UsageRow, cache: CacheEntry | None = None) -> None:
    """Write the ledger row, and the answer to the cache when given."""
    if cache is None:
        await db.execute(_INSERT, *row.args())
        return
    await db.execute(
        _INSERT_AND_CACHE, *row.args(), cache.key, cache.answer, float(cache.ttl_seconds)
    )
