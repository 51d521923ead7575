"""asyncpg pools and the versioned SQL migration runner."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

import asyncpg

from shared.config import BaseAppSettings

# pg_advisory_lock key for migrations: any constant works, this one spells "tgflow".
MIGRATION_LOCK_KEY = 0x7467666C6F77

Pool = asyncpg.Pool


async def create_pool(settings: BaseAppSettings, *, role: str, read_only: bool = False) -> Pool:
    """Open a pool sized by settings, JIT off and UTC, tagged with the process role."""
    server_settings = {
        "jit": "off",
        "timezone": "UTC",
        "application_name": f"tgflow-{role}",
    }
    if read_only:
        server_settings["default_transaction_read_only"] = "on"
    pool: Pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        command_timeout=settings.db_command_timeout,
        server_settings=server_settings,
        init=_init_connection,
        reset=_keep_session,
    )
    return pool


async def _keep_session(conn: asyncpg.Connection[Any]) -> None:
    """Release without asyncpg's reset query (advisory unlock, CLOSE ALL, UNLISTEN, RESET
    ALL): one more round trip on every release, for session state that pooled connections
    never change here. asyncpg still rolls back a transaction left open before this runs.
    """


async def _init_connection(conn: asyncpg.Connection[Any]) -> None:
    """Decode json/jsonb as Python values so rows come back ready to serialise."""
    import orjson

    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name,
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    """A recorded migration no longer matches the file shipped with this version."""


def load_migrations() -> list[Migration]:
    """Read shared/migrations/NNNN_name.sql in version order."""
    found: list[Migration] = []
    for entry in resources.files("shared.migrations").iterdir():
        if not entry.name.endswith(".sql"):
            continue
        stem = entry.name.removesuffix(".sql")
        version, _, name = stem.partition("_")
        found.append(Migration(int(version), name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {versions}")
    return found


async def migrate(dsn: str) -> list[int]:
    """Apply pending migrations under an advisory lock; return the versions applied now."""
    conn = await asyncpg.connect(dsn, server_settings={"jit": "off", "timezone": "UTC"})
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            return await _apply_pending(conn, load_migrations())
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    finally:
        await conn.close()


async def _apply_pending(conn: asyncpg.Connection[Any], migrations: list[Migration]) -> list[int]:
    await conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               version integer PRIMARY KEY,
               name text NOT NULL,
               checksum text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now())"""
    )
    rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
    applied = {r["version"]: r["checksum"] for r in rows}
    done: list[int] = []
    for m in migrations:
        if m.version in applied:
            if applied[m.version] != m.checksum:
                raise MigrationError(
                    f"migration {m.version}_{m.name} was changed after it was applied"
                )
            continue
        async with conn.transaction():
            await conn.execute(m.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                m.version,
                m.name,
                m.checksum,
            )
        done.append(m.version)
    return done
