"""A job as stored: the live Redis hash and the Postgres archive row share this shape."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel, Field

from shared.jobs.contract import JobStatus
from shared.jobs.envelope import from_micros, to_micros
from shared.jobs.routing import Priority


class JobErrorInfo(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None


class JobFailure(BaseModel):
    """One failed run in a job's error history (deferrals are waits, not failures)."""

    attempt: int = Field(description="The try that failed (tries restart at 1 on a requeue).")
    code: str
    message: str
    at: datetime
    final: bool = Field(default=False, description="This failure ended the job.")
    requeue: int = Field(default=0, description="Requeues of the job before this run.")


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
    priority: Priority = Priority.NORMAL
    history: list[JobFailure] = Field(
        default_factory=list, description="Every failed run, oldest first (the last 50)."
    )
    dead_at: datetime | None = Field(
        default=None, description="When the job was dead-lettered; cleared by a requeue."
    )
    requeued: int = Field(default=0, description="How often the job was requeued.")
    created_at: datetime
    run_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class JobRecord(JobView):
    """Everything tgflow knows about one job."""

    tenant: str
    queue: str
    seq: int = 0
    timeout: float | None = None
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
            priority=Priority(raw.get("priority") or Priority.NORMAL),
            history=orjson.loads(raw["history"]) if raw.get("history") else [],
            dead_at=ts("dead_at"),
            requeued=int(raw.get("requeued") or 0),
            timeout=float(raw["timeout"]) if raw.get("timeout") else None,
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
            # Older queries name only the original columns.
            history=row.get("history") or [],
            dead_at=row.get("dead_at"),
            requeued=row.get("requeued") or 0,
            timeout=row.get("timeout"),
            priority=Priority(row.get("priority") or Priority.NORMAL),
        )

    def hash_fields(self) -> dict[str, str]:
        """The job hash this record came from, as far as the archive keeps it."""

        def ts(value: datetime | None) -> str:
            return str(to_micros(value)) if value is not None else ""

        def js(value: Any) -> str:
            return orjson.dumps(value).decode() if value is not None else ""

        return {
            "id": self.id,
            "tenant": self.tenant,
            "type": self.type,
            "queue": self.queue,
            "status": self.status.value,
            "attempts": str(self.attempts),
            "params": js(self.params),
            "result": js(self.result),
            "error": self.error.model_dump_json() if self.error else "",
            "created_at": ts(self.created_at),
            "run_at": ts(self.run_at),
            "started_at": ts(self.started_at),
            "finished_at": ts(self.finished_at),
            "timeout": repr(self.timeout) if self.timeout is not None else "",
            "idempotency_key": self.idempotency_key or "",
            "trace_id": self.trace_id or "",
            "history": js([h.model_dump(mode="json") for h in self.history]),
            "dead_at": ts(self.dead_at),
            "requeued": str(self.requeued),
            "priority": self.priority.value,
            "seq": str(self.seq),
        }
