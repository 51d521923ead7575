"""The Redis -> Postgres job archive: ordering, batching and recovery."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
from redis.asyncio import Redis

from services.worker.archiver import GROUP, REJECTED_STREAM, Archiver
from shared.config import BaseAppSettings
from shared.db import create_pool
from shared.queue import ARCHIVE_STREAM
from tests.helpers import eventually


@pytest.fixture
async def archiver(redis: Redis) -> AsyncIterator[Archiver]:
    """An archiver (consumer ``c1``) on its own Postgres pool, its group made."""
    pool = await create_pool(BaseAppSettings(), role="test")
    one = Archiver(redis, pool, "c1")
    await one.ensure_group()
    yield one
    await pool.close()


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
    redis: Redis, pg: asyncpg.Connection[Any], archiver: Archiver
) -> None:
    job_id = str(uuid.uuid4())
    await redis.xadd(ARCHIVE_STREAM, snapshot(job_id, 3, "succeeded"))
    await archiver.step(block=False)
    await redis.xadd(ARCHIVE_STREAM, snapshot(job_id, 1, "queued"))
    await redis.xadd(ARCHIVE_STREAM, snapshot(job_id, 2, "running"))
    await archiver.step(block=False)
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


async def test_every_field_arrives_as_the_hash_held_it(
    redis: Redis, pg: asyncpg.Connection[Any], archiver: Archiver
) -> None:
    """Times to the microsecond, JSON as values, absent fields as NULL or their default;
    one batch holds several jobs."""
    full, bare = str(uuid.uuid4()), str(uuid.uuid4())
    history = [{"attempt": 1, "code": "timeout", "at": "2023-11-14T22:13:20Z"}]
    fields = {
        "id": full,
        "tenant": "acme",
        "type": "telegram.send_message",
        "queue": "telegram",
        "status": "failed",
        "params": '{"peer": "me", "text": "héllo"}',
        "attempts": "3",
        "result": "",
        "error": '{"code": "peer_invalid", "message": "No such peer."}',
        "idempotency_key": "k-1",
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "seq": "7",
        "created_at": "1700000000000001",
        "run_at": "1700000000500000",
        "started_at": "1700000001123457",
        "finished_at": "1700000002999999",
        "random_id": "-9007199254740993",
        "history": orjson.dumps(history).decode(),
        "dead_at": "1700000003000000",
        "requeued": "2",
        "timeout": "12.5",
        "priority": "high",
    }
    await redis.xadd(ARCHIVE_STREAM, {"job": orjson.dumps(fields).decode()})
    await redis.xadd(ARCHIVE_STREAM, snapshot(bare, 1, "queued"))
    assert await archiver.step(block=False) == 2
    row = await pg.fetchrow(
        "SELECT *, (extract(epoch FROM started_at) * 1000000)::bigint AS started_us, "
        "(extract(epoch FROM finished_at) * 1000000)::bigint AS finished_us "
        "FROM jobs WHERE id = $1",
        uuid.UUID(full),
    )
    assert orjson.loads(row["params"]) == {"peer": "me", "text": "héllo"}
    assert (row["result"], row["error_code"], row["error_message"]) == (
        None,
        "peer_invalid",
        "No such peer.",
    )
    assert (row["started_us"], row["finished_us"]) == (1700000001123457, 1700000002999999)
    assert row["created_at"].isoformat() == "2023-11-14T22:13:20.000001+00:00"
    assert row["dead_at"].isoformat() == "2023-11-14T22:13:23+00:00"
    assert row["random_id"] == -9007199254740993
    assert orjson.loads(row["history"]) == history
    assert (row["attempts"], row["requeued"], row["seq"]) == (3, 2, 7)
    assert (row["timeout"], row["priority"], row["idempotency_key"]) == (12.5, "high", "k-1")
    assert row["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    other = await pg.fetchrow("SELECT * FROM jobs WHERE id = $1", uuid.UUID(bare))
    assert orjson.loads(other["history"]) == []
    assert (other["started_at"], other["random_id"]) == (None, None)
    assert (other["priority"], other["timeout"], other["dead_at"]) == ("normal", None, None)


async def _cjson(redis: Redis, fields: dict[str, str]) -> str:
    """``fields`` encoded as the job scripts encode a snapshot (Redis's cjson)."""
    flat = [x for pair in fields.items() for x in pair]
    script = (
        "local o = {} for i = 1, #ARGV, 2 do o[ARGV[i]] = ARGV[i + 1] end return cjson.encode(o)"
    )
    encoded: str = await redis.eval(script, 0, *flat)  # type: ignore[misc]
    return encoded


async def test_nul_characters_are_archived_as_replacement_characters(
    redis: Redis, pg: asyncpg.Connection[Any], archiver: Archiver
) -> None:
    """U+0000 in a result, an error message or a plain field must not stop the archive."""
    bad, good = str(uuid.uuid4()), str(uuid.uuid4())
    fields = orjson.loads(snapshot(bad, 2, "failed")["job"])
    fields["result"] = orjson.dumps({"text": "a\x00b", "k\x00": ["\x00"]}).decode()
    fields["error"] = orjson.dumps({"code": "x", "message": "bad\x00byte"}).decode()
    fields["trace_id"] = "t\x00"
    await redis.xadd(ARCHIVE_STREAM, {"job": await _cjson(redis, fields)})
    await redis.xadd(ARCHIVE_STREAM, snapshot(good, 1, "queued"))
    assert await archiver.step(block=False) == 2
    row = await pg.fetchrow(
        "SELECT result, error_message, trace_id FROM jobs WHERE id = $1", uuid.UUID(bad)
    )
    assert orjson.loads(row["result"]) == {"text": "a\ufffdb", "k\ufffd": ["\ufffd"]}
    assert (row["error_message"], row["trace_id"]) == ("bad\ufffdbyte", "t\ufffd")
    assert await pg.fetchval("SELECT status FROM jobs WHERE id = $1", uuid.UUID(good)) == "queued"
    assert await redis.xlen(ARCHIVE_STREAM) == 0


async def test_a_row_postgres_refuses_is_set_aside_and_the_rest_archived(
    redis: Redis, pg: asyncpg.Connection[Any], archiver: Archiver
) -> None:
    bad, good = str(uuid.uuid4()), str(uuid.uuid4())
    broken = orjson.loads(snapshot(bad, 1, "queued")["job"])
    broken["params"] = "{not json"
    await redis.xadd(ARCHIVE_STREAM, {"job": orjson.dumps(broken).decode()})
    await redis.xadd(ARCHIVE_STREAM, snapshot(good, 3, "succeeded"))
    assert await archiver.step(block=False) == 2
    assert await pg.fetchval("SELECT status FROM jobs WHERE id = $1", uuid.UUID(good)) == (
        "succeeded"
    )
    assert await pg.fetchval("SELECT count(*) FROM jobs WHERE id = $1", uuid.UUID(bad)) == 0
    assert await redis.xlen(ARCHIVE_STREAM) == 0  # nothing left to block the next batch
    aside = await redis.xrange(REJECTED_STREAM)
    assert len(aside) == 1
    assert orjson.loads(aside[0][1]["job"])["id"] == bad
    assert "json" in aside[0][1]["error"].lower()


async def test_a_stop_cuts_a_blocking_read_short(redis: Redis, pg: asyncpg.Connection[Any]) -> None:
    """An idle archiver blocks on the stream for a while (5 s here): stop() ends that
    read at once rather than be waited out; what came before was archived."""
    pool = await create_pool(BaseAppSettings(), role="test")
    try:
        archiver = Archiver(redis, pool, "c1", block_ms=5000, linger=0.0)
        running = asyncio.create_task(archiver.run())
        job_id = str(uuid.uuid4())
        await redis.xadd(ARCHIVE_STREAM, snapshot(job_id, 1, "succeeded"))

        async def archived() -> bool:
            found: bool = await pg.fetchval(
                "SELECT count(*) = 1 FROM jobs WHERE id = $1", uuid.UUID(job_id)
            )
            return found

        await eventually(archived, timeout=5)
        await asyncio.sleep(0.3)  # blocked on the empty stream again
        archiver.stop()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(running, 10)
        assert loop.time() - started < 2.5  # not the 5 s block
    finally:
        await pool.close()
    assert await redis.xlen(ARCHIVE_STREAM) == 0
