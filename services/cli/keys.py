"""``tgflow keys``: generate vault keys and re-wrap every session under the newest one.

Rotation without downtime: put the new key first in TGFLOW_VAULT_KEYS, keep the old ones
after it, roll the workers, run ``tgflow keys rotate``, then drop the old keys.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from services.worker.telegram.accounts import sealed_of
from services.worker.telegram.vault import Vault, vault_from_settings
from shared.config import WorkerSettings


async def rotate(settings: WorkerSettings, *, batch: int = 200) -> int:
    """Re-wrap data keys not under the primary key; return how many accounts changed."""
    vault = vault_from_settings(
        settings.vault_keys.get_secret_value() if settings.vault_keys else None,
        settings.secret_key.get_secret_value(),
    )
    conn: asyncpg.Connection[Any] = await asyncpg.connect(settings.database_url)
    changed = 0
    try:
        while True:
            rows = await conn.fetch(
                """SELECT id, session_key_id, session_wrapped_key, session_ciphertext
                   FROM accounts WHERE session_key_id IS NOT NULL AND session_key_id <> $1
                   ORDER BY id LIMIT $2""",
                vault.primary_id,
                batch,
            )
            if not rows:
                return changed
            for row in rows:
                changed += await _rewrap_one(conn, vault, row)

    finally:
        await conn.close()


async def _rewrap_one(conn: asyncpg.Connection[Any], vault: Vault, row: Any) -> int:
    sealed = sealed_of(row)
    assert sealed is not None  # the query selects rows with a session key
    fresh = vault.rewrap(sealed, aad=row["id"].bytes)
    # Only if nobody re-sealed the session meanwhile (a worker saving a new one wins).
    status: str = await conn.execute(
        """UPDATE accounts SET session_wrapped_key = $2, session_key_id = $3, updated_at = now()
           WHERE id = $1 AND session_key_id = $4 AND session_wrapped_key = $5""",
        row["id"],
        fresh.wrapped_key,
        fresh.key_id,
        sealed.key_id,
        sealed.wrapped_key,
    )
    return int(status.split()[-1])


def run_rotate() -> int:
    settings = WorkerSettings()
    settings.ensure_safe()
    changed = asyncio.run(rotate(settings))
    print(f"re-wrapped {changed} session(s)")
    return 0


def run_generate(key_id: str | None) -> int:
    print(Vault.generate_entry(key_id))
    return 0
