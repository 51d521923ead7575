"""Read-only queries over the job archive (the gateway never writes Postgres)."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime

from shared.db import Pool
from shared.delivery.webhooks import WebhookState
from shared.jobs.envelope import from_micros, to_micros
from shared.jobs.record import JobRecord

_COLUMNS = """id, tenant_id, type, queue, status, params, attempts, result, error_code,
    error_message, idempotency_key, trace_id, seq, created_at, run_at, started_at, finished_at,
    history, dead_at, requeued, timeout"""


class InvalidCursor(ValueError):
    pass


def encode_cursor(created_at: datetime, job_id: str) -> str:
    raw = f"{to_micros(created_at)}:{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        micros, _, job_id = raw.partition(":")
        return from_micros(int(micros)), uuid.UUID(job_id)
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidCursor(cursor) from exc  # (a time past datetime's range overflows)


async def get_job(db: Pool, tenant: str, job_id: uuid.UUID) -> JobRecord | None:
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM jobs WHERE id = $1 AND tenant_id = $2",  # noqa: S608
        job_id,
        tenant,
    )
    return JobRecord.from_row(dict(row.items())) if row else None


async def list_jobs(
    db: Pool,
    tenant: str,
    *,
    status: str | None,
    job_type: str | None,
    limit: int,
    cursor: tuple[datetime, uuid.UUID] | None,
) -> list[JobRecord]:
    """Newest first, keyset-paginated on (created_at, id)."""
    after_ts, after_id = cursor if cursor else (None, None)
    rows = await db.fetch(
        f"""SELECT {_COLUMNS} FROM jobs
            WHERE tenant_id = $1
              AND ($2::text IS NULL OR status = $2)
              AND ($3::text IS NULL OR type = $3)
              AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5::uuid))
            ORDER BY created_at DESC, id DESC
            LIMIT $6""",  # noqa: S608
        tenant,
        status,
        job_type,
        after_ts,
        after_id,
        limit,
    )
    return [JobRecord.from_row(dict(r.items())) for r in rows]


async def list_dead_letters(
    db: Pool,
    tenant: str,
    *,
    job_type: str | None,
    error_code: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    cursor: tuple[datetime, uuid.UUID] | None,
) -> list[JobRecord]:
    """Newest dead-lettering first, keyset-paginated on (dead_at, id); since <= dead_at < until."""
    after_ts, after_id = cursor if cursor else (None, None)
    rows = await db.fetch(
        f"""SELECT {_COLUMNS} FROM jobs
            WHERE tenant_id = $1 AND dead_at IS NOT NULL
              AND ($2::text IS NULL OR type = $2)
              AND ($3::text IS NULL OR error_code = $3)
              AND ($4::timestamptz IS NULL OR dead_at >= $4)
              AND ($5::timestamptz IS NULL OR dead_at < $5)
              AND ($6::timestamptz IS NULL OR (dead_at, id) < ($6, $7::uuid))
            ORDER BY dead_at DESC, id DESC
            LIMIT $8""",  # noqa: S608
        tenant,
        job_type,
        error_code,
        since,
        until,
        after_ts,
        after_id,
        limit,
    )
    return [JobRecord.from_row(dict(r.items())) for r in rows]


async def get_webhook(db: Pool, tenant: str, job_id: uuid.UUID) -> WebhookState | None:
    """A settled completion webhook, once Redis has let it go."""
    row = await db.fetchrow(
        "SELECT delivery_id, url, status, attempts, last_status_code, last_error, "
        "last_attempt_at, delivered_at FROM webhook_deliveries "
        "WHERE job_id = $1 AND tenant_id = $2",
        job_id,
        tenant,
    )
    return WebhookState.from_row(dict(row.items())) if row else None
