"""``tgflow keys``: generate vault keys and re-wrap every session under the newest one.

Rotation without downtime: put the new key first in TGFLOW_VAULT_KEYS, keep the old ones
after it, roll the workers, run ``tgflow keys rotate``, then drop the old keys.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from services.worker.telegram.accounts import sealed_of
from services.worker.telegram.vault import Vault, VaultError, check_key_id, settings_vault
from shared.config import WorkerSettings
from shared.logs import get_logger

log = get_logger(__name__)


@dataclass
class Rotation:
    """What a rotation did: sessions re-wrapped, and accounts whose session would not open."""

    changed: int = 0
    failed: list[uuid.UUID] = field(default_factory=list)


async def rotate(settings: WorkerSettings, *, batch: int = 200) -> Rotation:
    """Re-wrap data keys not under the primary key, skipping (and listing) any that fail:
    accounts' sessions, and the replaced sessions still waiting to be logged out (one
    left under a dropped key could never be opened to log its key out)."""
    vault = settings_vault(settings)
    conn: asyncpg.Connection[Any] = await asyncpg.connect(settings.database_url)
    done = Rotation()
    try:
        for table in _SEALED:
            await _rotate_table(conn, vault, table, batch, done)
    finally:
        await conn.close()
    return done


@dataclass(frozen=True)
class _Table:
    name: str
    account: str  # the column holding the account id bound into the ciphertext
    start: Any  # below every row id, for keyset paging
    touch: str = ""  # what else a re-wrap sets


_SEALED = (
    _Table("accounts", "id", uuid.UUID(int=0), ", updated_at = now()"),
    _Table("replaced_sessions", "account_id", 0),
)


async def _rotate_table(
    conn: asyncpg.Connection[Any], vault: Vault, table: _Table, batch: int, done: Rotation
) -> None:
    after = table.start
    while True:
        # Keyset paging: a row that cannot be re-wrapped stays behind, not in front.
        rows = await conn.fetch(
            f"""SELECT id, {table.account} AS account_id, session_key_id, session_wrapped_key,
                       session_ciphertext
                FROM {table.name} WHERE session_key_id IS NOT NULL AND session_key_id <> $1
                  AND id > $3
                ORDER BY id LIMIT $2""",  # noqa: S608 - table and column names are ours
            vault.primary_id,
            batch,
            after,
        )
        if not rows:
            return
        for row in rows:
            try:
                done.changed += await _rewrap_one(conn, vault, table, row)
            except VaultError as exc:
                done.failed.append(row["account_id"])
                log.warning(
                    "session not re-wrapped",
                    account_id=str(row["account_id"]),
                    table=table.name,
                    error=str(exc),
                )
        after = rows[-1]["id"]


async def _rewrap_one(conn: asyncpg.Connection[Any], vault: Vault, table: _Table, row: Any) -> int:
    sealed = sealed_of(row)
    assert sealed is not None  # the query selects rows with a session key
    fresh = vault.rewrap(sealed, aad=row["account_id"].bytes)
    # Only if nobody re-sealed the session meanwhile (a worker saving a new one wins).
    status: str = await conn.execute(
        f"""UPDATE {table.name} SET session_wrapped_key = $2, session_key_id = $3{table.touch}
            WHERE id = $1 AND session_key_id = $4 AND session_wrapped_key = $5""",  # noqa: S608
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
    try:
        done = asyncio.run(rotate(settings))
    except VaultError as exc:  # TGFLOW_VAULT_KEYS itself is wrong: nothing was touched
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"re-wrapped {done.changed} session(s)")
    if done.failed:
        print(
            f"error: {len(done.failed)} session(s) could not be re-wrapped (is their vault key"
            " still in TGFLOW_VAULT_KEYS?); keep the old keys until these are fixed:",
            file=sys.stderr,
        )
        for account_id in done.failed:
            print(f"  account {account_id}", file=sys.stderr)
        return 1
    return 0


def run_generate(key_id: str | None) -> int:
    """Print a new entry, whose id no key in TGFLOW_VAULT_KEYS has already."""
    settings = WorkerSettings()
    try:
        if key_id is not None:  # an id the vault would refuse is refused here, not later
            check_key_id(key_id)
        vault = settings_vault(settings) if settings.vault_keys else None
    except VaultError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if vault is not None and key_id is not None and vault.has_key(key_id):
        print(
            f"error: TGFLOW_VAULT_KEYS already has a key with id {key_id!r}; a new key needs"
            " a new id",
            file=sys.stderr,
        )
        return 2
    entry = Vault.generate_entry(key_id)
    while vault is not None and vault.has_key(entry.partition(":")[0]):  # a random id taken
        entry = Vault.generate_entry()
    print(entry)
    return 0
