"""Copy job changes from the Redis ``tgflow:archive`` stream into the Postgres ``jobs`` table.

Every worker runs one archiver in a shared consumer group. Rows are upserted in batches of
one statement each and only move forward (a row keeps the change with the highest
``seq``), so batches may arrive in any order. After a read that did not fill a batch the
archiver lingers ``linger`` seconds (0.25): the next batch is bigger, and the changes of a
job that moved on within that time collapse into one row write. Every status change is an
update of indexed columns, so this matters: under a steady load the table took about 2.9
writes per job with a 50 ms linger, and 2.3 with this one (docs/benchmarks.md); a job
read from the table may lag its live state by that much. Entries are acknowledged only
after Postgres has them; entries left pending by a dead worker are claimed by another
after ``claim_idle`` seconds.

A batch PostgreSQL refuses is never allowed to stop archiving for everyone: U+0000, which
PostgreSQL keeps in neither text nor JSON, becomes U+FFFD on the way in (the gateway
refuses it in params, but a result or an error message can still carry it), and a batch
refused all the same is written row by row, each row it still refuses set aside in the
``tgflow:archive:rejected`` stream with its error, logged and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

import asyncpg
import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from services.worker import metrics
from shared.aio import raise_if_cancelling, sleep_unless, unless_stopped
from shared.db import Pool
from shared.logs import get_logger
from shared.queue import ARCHIVE_STREAM

log = get_logger(__name__)

GROUP = "tgflow-archivers"
REJECTED_STREAM = "tgflow:archive:rejected"
REJECTED_MAX = 10_000  # entries kept for inspection (approximately: MAXLEN ~)
_JSON_FIELDS = ("params", "result", "history", "error")

# One statement per batch over column arrays: far cheaper for asyncpg and Postgres than
# a statement per row. JSON columns travel as the text the job hash already holds, and
# times as the hash's microseconds since the epoch, so nothing is decoded to be re-encoded.
_UPSERT = """
INSERT INTO jobs (id, tenant_id, type, queue, status, params, attempts, result, error_code,
                  error_message, idempotency_key, trace_id, seq, created_at, run_at,
                  started_at, finished_at, random_id, history, dead_at, requeued, timeout,
                  priority, updated_at)
SELECT id, tenant_id, type, queue, status, params::jsonb, attempts, result::jsonb,
       error_code, error_message, idempotency_key, trace_id, seq,
       'epoch'::timestamptz + created_at * interval '1 microsecond',
       'epoch'::timestamptz + run_at * interval '1 microsecond',
       'epoch'::timestamptz + started_at * interval '1 microsecond',
       'epoch'::timestamptz + finished_at * interval '1 microsecond',
       random_id, coalesce(history::jsonb, '[]'::jsonb),
       'epoch'::timestamptz + dead_at * interval '1 microsecond',
       requeued, timeout, priority, now()
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::integer[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
            $13::bigint[], $14::bigint[], $15::bigint[], $16::bigint[], $17::bigint[],
            $18::bigint[], $19::text[], $20::bigint[], $21::integer[],
            $22::double precision[], $23::text[])
    AS r(id, tenant_id, type, queue, status, params, attempts, result, error_code,
         error_message, idempotency_key, trace_id, seq, created_at, run_at, started_at,
         finished_at, random_id, history, dead_at, requeued, timeout, priority)
ON CONFLICT (id) DO UPDATE SET
    status = EXCLUDED.status, attempts = EXCLUDED.attempts, result = EXCLUDED.result,
    error_code = EXCLUDED.error_code, error_message = EXCLUDED.error_message,
    trace_id = EXCLUDED.trace_id, seq = EXCLUDED.seq, run_at = EXCLUDED.run_at,
    started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
    random_id = EXCLUDED.random_id, history = EXCLUDED.history, dead_at = EXCLUDED.dead_at,
    requeued = EXCLUDED.requeued, updated_at = now()
WHERE jobs.seq < EXCLUDED.seq
"""


def _opt_int(value: str | None) -> int | None:
    return int(value) if value else None


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


def snapshot_of(raw: str | bytes) -> dict[str, str]:
    """A stream entry's job snapshot, with any U+0000 (in a field or inside one of its
    JSON texts) turned into U+FFFD. The escape is looked for first: almost never there."""
    snap: dict[str, str] = orjson.loads(raw)
    marker = "\\u0000" if isinstance(raw, str) else b"\\u0000"
    if marker not in raw:  # type: ignore[operator]
        return snap
    clean = {k: v.replace("\x00", "\ufffd") for k, v in snap.items()}
    for name in _JSON_FIELDS:
        text = snap.get(name)
        if text and "\\u0000" in text:
            # (not JSON after all: the plain replacement above stands)
            with contextlib.suppress(orjson.JSONDecodeError):
                clean[name] = orjson.dumps(_without_nul(orjson.loads(text))).decode()
    return clean


def row_of(snapshot: Mapping[str, str]) -> tuple[Any, ...]:
    """A job hash snapshot as one row of the upsert's column arrays."""
    error = orjson.loads(snapshot["error"]) if snapshot.get("error") else {}
    return (
        snapshot["id"],
        snapshot["tenant"],
        snapshot["type"],
        snapshot["queue"],
        snapshot["status"],
        snapshot["params"],
        int(snapshot.get("attempts") or 0),
        snapshot.get("result") or None,
        error.get("code"),
        error.get("message"),
        snapshot.get("idempotency_key") or None,
        snapshot.get("trace_id") or None,
        int(snapshot["seq"]),
        int(snapshot["created_at"]),
        int(snapshot["run_at"]),
        _opt_int(snapshot.get("started_at")),
        _opt_int(snapshot.get("finished_at")),
        _opt_int(snapshot.get("random_id")),
        snapshot.get("history") or None,
        _opt_int(snapshot.get("dead_at")),
        int(snapshot.get("requeued") or 0),
        float(snapshot["timeout"]) if snapshot.get("timeout") else None,
        snapshot.get("priority") or "normal",
    )


def columns_of(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows (at least one) turned into the statement's column arrays."""
    return [list(column) for column in zip(*rows, strict=True)]


class Archiver:
    def __init__(
        self,
        redis: Redis,
        db: Pool,
        consumer: str,
        *,
        batch: int = 2000,
        block_ms: int = 1000,
        claim_idle: float = 30.0,
        linger: float = 0.25,
    ) -> None:
        self.redis = redis
        self.db = db
        self.consumer = consumer
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = int(claim_idle * 1000)
        self.linger = linger
        self._known_tenants: set[str] = set()
        self._stopping = asyncio.Event()

    async def ensure_group(self) -> None:
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists already
            await self.redis.xgroup_create(ARCHIVE_STREAM, GROUP, id="0", mkstream=True)

    async def run(self) -> None:
        """Archive until ``stop()``, then flush what is already in the stream."""
        backoff = 0.1
        while True:
            try:
                await self.ensure_group()
                await self._retry_own_pending()
                await self._claim_abandoned()
                claimed_at = time.monotonic()
                while not self._stopping.is_set():
                    if 0 < await self.step(block=True) < self.batch:
                        # Under a steady trickle each read would hold a handful of
                        # entries; waiting a moment lets one transaction take many.
                        await sleep_unless(self._stopping, self.linger)
                    if time.monotonic() - claimed_at > self.claim_idle_ms / 1000:
                        await self._claim_abandoned()
                        claimed_at = time.monotonic()
                await self._retry_own_pending()  # a read stop() cut short may have taken some
                await self.drain()
                return
            except (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # Redis or Postgres away, or a statement refused in a way no row explains:
                # archiving waits and tries again, it never stops for good.
                raise_if_cancelling()
                log.warning("archiver retrying", error=type(exc).__name__, detail=str(exc))
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
            if self._stopping.is_set():
                return

    def stop(self) -> None:
        self._stopping.set()

    async def step(self, *, block: bool) -> int:
        """Read, write and acknowledge one batch; return how many entries it held."""
        read = self.redis.xreadgroup(
            GROUP,
            self.consumer,
            {ARCHIVE_STREAM: ">"},
            count=self.batch,
            block=self.block_ms if block else None,
        )
        try:  # a blocking read is cut short by stop(): what it took is retried as own
            response = await (unless_stopped(read, self._stopping) if block else read)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()  # the stream was lost (Redis restarted empty)
            return 0
        if not response:
            return 0
        entries = response[0][1]
        await self.write(entries)
        return len(entries)

    async def drain(self) -> None:
        while await self.step(block=False):
            pass

    async def write(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        if not entries:
            return
        latest: dict[str, dict[str, str]] = {}
        for _, fields in entries:
            snap = snapshot_of(fields["job"])
            current = latest.get(snap["id"])
            if current is None or int(snap["seq"]) > int(current["seq"]):
                latest[snap["id"]] = snap
        try:
            await self._upsert(list(latest.values()))
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            # One row Postgres will not take must not hold back the rest for good.
            log.warning("archive batch refused; writing it row by row", error=str(exc))
            for snap in latest.values():
                await self._upsert_or_set_aside(snap)
        ids = [entry_id for entry_id, _ in entries]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(ARCHIVE_STREAM, GROUP, *ids)
            pipe.xdel(ARCHIVE_STREAM, *ids)
            await pipe.execute()
        metrics.ARCHIVED.inc(len(latest))

    async def _upsert(self, snapshots: list[dict[str, str]]) -> None:
        rows = [row_of(s) for s in snapshots]
        async with self.db.acquire() as conn, conn.transaction():
            added = await self._ensure_tenants(conn, {s["tenant"] for s in snapshots})
            await conn.execute(_UPSERT, *columns_of(rows))
        self._known_tenants.update(added)  # only once committed: a refused batch adds none

    async def _upsert_or_set_aside(self, snap: dict[str, str]) -> None:
        try:
            await self._upsert([snap])
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            job_id = snap.get("id", "")
            log.error("job change not archived; set aside", job_id=job_id, error=str(exc))
            metrics.ARCHIVE_REJECTED.inc()
            await self.redis.xadd(
                REJECTED_STREAM,
                {"job": orjson.dumps(snap), "error": str(exc)[:2000]},
                maxlen=REJECTED_MAX,
                approximate=True,
            )

    async def _ensure_tenants(self, conn: Any, tenants: set[str]) -> list[str]:
        """Insert the tenants not known to exist; those it inserted (or found)."""
        new = sorted(tenants - self._known_tenants)
        if new:
            await conn.execute(
                "INSERT INTO tenants (id, name) SELECT t, t FROM unnest($1::text[]) AS t "
                "ON CONFLICT (id) DO NOTHING",
                new,
            )
        return new

    async def _retry_own_pending(self) -> None:
        """Write entries this consumer read before a failure cut the batch short."""
        while True:
            response = await self.redis.xreadgroup(
                GROUP, self.consumer, {ARCHIVE_STREAM: "0"}, count=self.batch
            )
            entries = [(i, f) for i, f in (response[0][1] if response else []) if f]
            if not entries:
                return
            await self.write(entries)

    async def _claim_abandoned(self) -> None:
        """Take over entries another archiver read but never acknowledged."""
        start = "0-0"
        while True:
            result = await self.redis.xautoclaim(
                ARCHIVE_STREAM, GROUP, self.consumer, self.claim_idle_ms, start, count=self.batch
            )
            start, claimed = result[0], result[1]
            if claimed:
                await self.write([(i, f) for i, f in claimed if f])
            if start == "0-0":
                return
