"""The Redis -> Postgres job archive: ordering, batching and recovery."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import orjson
from redis.asyncio import Redis

from services.worker.archiver import GROUP, Archiver
from shared.config import BaseAppSettings
from shared.db import create_pool
from shared.queue import ARCHIVE_STREAM


def snapshot(job_id: str, seq: int, status: str) -> dict[str, str]:
    return {
        "job": orjson.dumps(
            {
                "id": job_id,
                "tenant": "acme",
                "type": "system.echo",
                "queue": "control",
                "status": status,
                "params": "{}",
                "attempts": "1",
                "seq": str(seq),
                "created_at": "1700000000000000",
                "run_at": "1700000000000000",
                "result": '{"ok": true}' if status == "succeeded" else "",
            }
        ).decode()
    }


async def test_highest_seq_wins_whatever_the_order(
    redis: Redis, pg: asyncpg.Connection[Any]
) -> None:
    job_id = str(uuid.uuid4())
    pool = await create_pool(BaseAppSettings(), role="test")
    archiver = Archiver(redis, pool, "c1")
    await archiver.ensure_group()
    try:
        await redis.xadd(ARCHIVE_STREAM, snapshot(job_id, 3, "succeeded"))
        await archiver.step(block=False)
        await redis.xadd(ARCHIVE_STREAM, snapshot(job_id, 1, "queued"))
        await redis.xadd(ARCHIVE_STREAM, snapshot(job_id, 2, "running"))
        await archiver.step(block=False)
    finally:
        await pool.close()
    row = await pg.fetchrow("SELECT status, seq, result FROM jobs WHERE id = $1", uuid.UUID(job_id))
    assert (row["status"], row["seq"]) == ("succeeded", 3)
    assert await redis.xlen(ARCHIVE_STREAM) == 0  # acknowledged and deleted


async def test_entries_of_a_dead_archiver_are_claimed(
    redis: Redis, pg: asyncpg.Connection[Any]
) -> None:
    job_id = str(uuid.uuid4())
    pool = await create_pool(BaseAppSettings(), role="test")
    dead = Archiver(redis, pool, "dead")
    await dead.ensure_group()
    await redis.xadd(ARCHIVE_STREAM, snapshot(job_id, 1, "queued"))
    # "dead" reads the entry and dies before writing it.
    await redis.xreadgroup(GROUP, "dead", {ARCHIVE_STREAM: ">"}, count=10)
    survivor = Archiver(redis, pool, "alive", claim_idle=0.0)
    try:
        await survivor._claim_abandoned()
    finally:
        await pool.close()
    assert await pg.fetchval("SELECT status FROM jobs WHERE id = $1", uuid.UUID(job_id)) == "queued"
    pending = await redis.xpending(ARCHIVE_STREAM, GROUP)
    assert pending["pending"] == 0
