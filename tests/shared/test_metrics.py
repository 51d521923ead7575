"""Pool gauges every process exposes (the monitor scrapes them)."""

from __future__ import annotations

import asyncio

from shared import metrics
from shared.config import BaseAppSettings
from shared.db import create_pool


async def test_pool_gauges_count_connections_in_use_and_waiters(database_url: str) -> None:
    pool = await create_pool(BaseAppSettings(db_pool_min=1, db_pool_max=1), role="probe")
    metrics.track_pool(pool, "probe")
    try:
        held = await pool.acquire()
        waiting = asyncio.create_task(pool.fetchval("SELECT 1"))
        await asyncio.sleep(0.05)
        text = metrics.render()[0].decode()
        assert 'tgflow_db_pool_in_use{role="probe"} 1.0' in text
        assert 'tgflow_db_pool_waiters{role="probe"} 1.0' in text
        await pool.release(held)
        assert await waiting == 1
        assert metrics.waiters(pool) == 0
    finally:
        metrics.untrack_pool("probe")
        await pool.close()
