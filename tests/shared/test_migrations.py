"""Versioned migrations: applied once, safely from many processes at a time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from shared.db import Migration, MigrationError, _apply_pending, load_migrations, migrate
from tests.conftest import ADMIN_DSN, _with_database


@pytest.fixture
async def empty_db() -> AsyncIterator[str]:
    name = "tgflow_test_migrate"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    yield _with_database(ADMIN_DSN, name)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


async def test_concurrent_migrations_apply_each_version_once(empty_db: str) -> None:
    results = await asyncio.gather(*(migrate(empty_db) for _ in range(8)))
    versions = [m.version for m in load_migrations()]
    assert sorted(v for r in results for v in r) == versions  # exactly one runner applied them
    conn = await asyncpg.connect(empty_db)
    try:
        rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        column = await conn.fetchrow(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_name = 'jobs' AND column_name = 'created_at'"
        )
    finally:
        await conn.close()
    assert [r["version"] for r in rows] == versions
    assert column["data_type"] == "timestamp with time zone"
    assert await migrate(empty_db) == []


async def test_an_edited_migration_is_refused(empty_db: str) -> None:
    await migrate(empty_db)
    first = load_migrations()[0]
    edited = Migration(first.version, first.name, first.sql + "\n-- edited")
    conn: asyncpg.Connection[Any] = await asyncpg.connect(empty_db)
    try:
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await _apply_pending(conn, [edited])
    finally:
        await conn.close()


async def test_phones_stored_as_digits_gain_their_plus(empty_db: str) -> None:
    before = [m for m in load_migrations() if m.version < 13]
    conn: asyncpg.Connection[Any] = await asyncpg.connect(empty_db)
    try:
        await _apply_pending(conn, before)
        await conn.execute("INSERT INTO tenants (id, name) VALUES ('acme', 'acme')")
        for phone in ("15550001313", "+15550001212", None):
            await conn.execute(
                "INSERT INTO accounts (id, tenant_id, phone, state)"
                " VALUES (gen_random_uuid(), 'acme', $1, 'active')",
                phone,
            )
        await _apply_pending(conn, load_migrations())
        phones = await conn.fetch("SELECT phone FROM accounts ORDER BY phone NULLS LAST")
    finally:
        await conn.close()
    assert [r["phone"] for r in phones] == ["+15550001212", "+15550001313", None]


async def test_logins_pending_before_the_sign_in_mark_are_checked_before_they_go(
    empty_db: str,
) -> None:
    """Logins pending when migration 14 runs may hold a key a lost step signed in (their
    steps recorded nothing of it): the ones holding a session are marked as such."""
    before = [m for m in load_migrations() if m.version < 14]
    conn: asyncpg.Connection[Any] = await asyncpg.connect(empty_db)
    try:
        await _apply_pending(conn, before)
        await conn.execute("INSERT INTO tenants (id, name) VALUES ('acme', 'acme')")
        for phone, state, session in (
            ("+15550001401", "login_pending", b"\x00"),
            ("+15550001402", "login_pending", None),  # cancelled: its session erased
            ("+15550001403", "active", b"\x00"),
        ):
            await conn.execute(
                "INSERT INTO accounts (id, tenant_id, phone, state, session_ciphertext)"
                " VALUES (gen_random_uuid(), 'acme', $1, $2, $3)",
                phone,
                state,
                session,
            )
        await _apply_pending(conn, load_migrations())
        rows = await conn.fetch(
            "SELECT phone, login_may_be_signed_in AS marked, login_checks_failed FROM accounts"
            " ORDER BY phone"
        )
    finally:
        await conn.close()
    assert [tuple(r) for r in rows] == [
        ("+15550001401", True, 0),
        ("+15550001402", False, 0),
        ("+15550001403", False, 0),
    ]


async def test_pools_run_with_jit_off_in_utc(database_url: str) -> None:
    from shared.config import BaseAppSettings
    from shared.db import create_pool

    pool = await create_pool(BaseAppSettings(), role="test")
    try:
        assert await pool.fetchval("SHOW jit") == "off"
        assert await pool.fetchval("SHOW timezone") == "UTC"
    finally:
        await pool.close()
    ro = await create_pool(BaseAppSettings(), role="gateway", read_only=True)
    try:
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await ro.execute("INSERT INTO tenants (id, name) VALUES ('x', 'x')")
    finally:
        await ro.close()


async def test_a_release_costs_no_reset_round_trip_and_rolls_back_a_left_transaction(
    database_url: str,
) -> None:
    """The pool hands connections back without asyncpg's reset query; a transaction left
    open is still rolled back."""
    from shared.config import BaseAppSettings
    from shared.db import create_pool

    pool = await create_pool(BaseAppSettings(db_pool_min=1, db_pool_max=1), role="test")
    watcher = await asyncpg.connect(database_url)
    try:
        pid = await pool.fetchval("SELECT pg_backend_pid() /* probe */")
        last = await watcher.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", pid)
        assert last == "SELECT pg_backend_pid() /* probe */"
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute("CREATE TEMP TABLE left_behind (x int)")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == pid
            assert await conn.fetchval("SELECT to_regclass('pg_temp.left_behind')") is None
    finally:
        await watcher.close()
        await pool.close()
