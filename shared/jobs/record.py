"""A job as stored: the live Redis hash and the Postgres archive row share this shape."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel

from shared.jobs.contract import JobStatus
from shared.jobs.envelope import from_micros


class JobErrorInfo(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None


class JobView(BaseModel):
    """What a tenant may see of a job (the API's job shape)."""

    id: str
    type: str
    status: JobStatus
    params: dict[str, Any]
    attempts: int
    result: Any = None
    error: JobErrorInfo | None = None
    idempotency_key: str | None = None
    trace_id: str | None = None
    cancel_requested: bool = False
    progress: Any = None
    created_at: datetime
    run_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class JobRecord(JobView):
    """Everything tgflow knows about one job."""

    tenant: str
    queue: str
    seq: int = 0
    webhook_url: str | None = None

    @classmethod
    def from_redis(cls, raw: Mapping[str, str]) -> JobRecord:
        """Build from a job hash (all values are strings; JSON fields are encoded)."""

        def ts(name: str) -> datetime | None:
            value = raw.get(name)
            return from_micros(value) if value else None

        error = raw.get("error")
        return cls(
            id=raw["id"],
            tenant=raw["tenant"],
            type=raw["type"],
            queue=raw["queue"],
            status=JobStatus(raw["status"]),
            params=orjson.loads(raw["params"]),
            attempts=int(raw.get("attempts", 0)),
            result=orjson.loads(raw["result"]) if raw.get("result") else None,
            error=JobErrorInfo.model_validate_json(error) if error else None,
            idempotency_key=raw.get("idempotency_key") or None,
            trace_id=raw.get("trace_id") or None,
            seq=int(raw.get("seq", 0)),
            created_at=from_micros(raw["created_at"]),
            run_at=from_micros(raw["run_at"]),
            started_at=ts("started_at"),
            finished_at=ts("finished_at"),
            cancel_requested=raw.get("cancel_requested") == "1",
            progress=orjson.loads(raw["progress"]) if raw.get("progress") else None,
            webhook_url=raw.get("webhook_url") or None,
        )

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> JobRecord:
        """Build from a ``jobs`` table row."""
        error = None
        if row["error_code"]:
            error = JobErrorInfo(code=row["error_code"], message=row["error_message"] or "")
        return cls(
            id=str(row["id"]),
            tenant=row["tenant_id"],
            type=row["type"],
            queue=row["queue"],
            status=JobStatus(row["status"]),
            params=row["params"],
            attempts=row["attempts"],
            result=row["result"],
            error=error,
            idempotency_key=row["idempotency_key"],
            trace_id=row["trace_id"],
            seq=row["seq"],
            created_at=row["created_at"],
            run_at=row["run_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
        )
