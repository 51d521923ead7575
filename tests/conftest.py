"""Fixtures over a real PostgreSQL and a real Redis, isolated per test.

A fresh database is created for the session and migrated; every test starts with
empty tables and an empty Redis database. URLs come from TGFLOW_TEST_DATABASE_URL
(an admin connection) and TGFLOW_TEST_REDIS_URL. Without a database number in the Redis
URL, each session claims a free one of 9-15 with a lock key, so that two test sessions
on one machine never flush each other's data.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from redis.asyncio import Redis

from shared.db import migrate
from shared.queue import JobStore
from tests import breakable

ADMIN_DSN = os.environ.get(
    "TGFLOW_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_BASE = os.environ.get("TGFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379")
REDIS_URL = REDIS_BASE  # pytest_configure appends the database this session claims
SESSION_LOCK = "tgflow:test-session"


def _claim_redis_db() -> str:
    import redis as sync_redis

    if urlsplit(REDIS_BASE).path.strip("/"):
        return REDIS_BASE
    owner = str(os.getpid())
    for db in range(9, 16):
        url = f"{REDIS_BASE.rstrip('/')}/{db}"
        client = sync_redis.Redis.from_url(url)
        try:
            if client.set(SESSION_LOCK, owner, nx=True, ex=6 * 3600):
                return url
        finally:
            client.close()
    raise RuntimeError("Redis databases 9-15 are all claimed by other test sessions")


def pytest_configure(config: pytest.Config) -> None:
    global REDIS_URL
    REDIS_URL = _claim_redis_db()


def pytest_unconfigure(config: pytest.Config) -> None:
    import redis as sync_redis

    client = sync_redis.Redis.from_url(REDIS_URL)
    try:
        if client.get(SESSION_LOCK) == str(os.getpid()).encode():
            client.delete(SESSION_LOCK)
    finally:
        client.close()


TABLES = (
    "jobs",
    "tenants",
    "monitor_alerts",
    "monitor_silences",
    "monitor_nflog",
    "monitor_notifications",
    "ai_cache",
    "ai_usage",
    "webhook_deliveries",
)


def _with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    name = f"tgflow_test_{os.getpid()}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(ADMIN_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = _with_database(ADMIN_DSN, name)
    asyncio.run(migrate(url))
    yield url
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(autouse=True)
def tgflow_env(monkeypatch: pytest.MonkeyPatch, database_url: str) -> dict[str, str]:
    """Point every settings class (and child processes) at the test services."""
    env = {
        "TGFLOW_ENV": "development",
        "TGFLOW_DATABASE_URL": database_url,
        "TGFLOW_REDIS_URL": REDIS_URL,
        "TGFLOW_LOG_LEVEL": "WARNING",
        "TGFLOW_MIGRATE_ON_START": "false",
        "TGFLOW_HEARTBEAT_SECONDS": "1",
    }
    for key in list(os.environ):
        if key.startswith("TGFLOW_") and not key.startswith("TGFLOW_TEST_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture(autouse=True)
def clean_state(database_url: str) -> None:
    async def wipe() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f"TRUNCATE {', '.join(TABLES)} CASCADE")
        finally:
            await conn.close()
        redis = Redis.from_url(REDIS_URL)
        try:
            await redis.flushdb()
            await redis.set(SESSION_LOCK, str(os.getpid()), ex=6 * 3600)  # keep our claim
        finally:
            await redis.aclose()

    asyncio.run(wipe())


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client: Redis = Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    conn: asyncpg.Connection[Any] = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


# --- hygiene: no blocking sleeps inside the event loop, no traffic beyond loopback ---

_real_sleep = time.sleep
_real_connect = socket.socket.connect


def _guarded_sleep(seconds: float) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        _real_sleep(seconds)
        return
    raise AssertionError(f"time.sleep({seconds}) called inside a running event loop")


def _guarded_connect(self: socket.socket, address: Any) -> None:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise AssertionError(f"test tried to reach {address}, beyond loopback")
    _real_connect(self, address)


@pytest.fixture(autouse=True)
def hygiene(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "sleep", _guarded_sleep)
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)


@pytest.fixture
def switch() -> Iterator[breakable.Switch]:
    """The ``test.breakable`` job type, registered for one test."""
    with breakable.registered() as switch:
        yield switch


@pytest.fixture
async def store(redis: Redis) -> JobStore:
    """A job store on this session's Redis database (4 Telegram shards)."""
    return JobStore(redis, status_ttl=600, idempotency_ttl=600, shards=4)
