"""The response cache in Postgres, keyed by a hash of everything that shapes an answer."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from shared.db import Pool


def cache_key(tenant: str, provider: str, model: str, body: dict[str, Any]) -> str:
    """SHA-256 over the tenant, provider, model and request body (messages, parameters).

    The tenant is part of the key so one tenant can never learn, from a cached answer,
    what another asked.
    """
    canonical = orjson.dumps(
        {"tenant": tenant, "provider": provider, "model": model, "body": body},
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(canonical).hexdigest()


async def lookup(db: Pool, key: str) -> dict[str, Any] | None:
    """A stored answer that has not expired, or None."""
    answer: dict[str, Any] | None = await db.fetchval(
        "SELECT answer FROM ai_cache WHERE key = $1 AND expires_at > now()", key
    )
    return answer


async def prune(db: Pool, batch: int = 5000) -> int:
    """Delete up to ``batch`` expired answers; returns how many went."""
    status: str = await db.execute(
        """DELETE FROM ai_cache WHERE key IN (
               SELECT key FROM ai_cache WHERE expires_at <= now() LIMIT $1)""",
        batch,
    )
    return int(status.rsplit(" ", 1)[-1])
