"""Live job events: what ``job_changed`` publishes, and the same shape for a job's state.

Names: ``queued`` (submitted), ``started`` (a run began), ``progress`` (a running job
reported progress), ``retrying`` (a run ended without finishing the job: it failed and
will retry, was deferred, or was handed back by a stopping worker) and ``finished``
(succeeded, failed or cancelled; the last event of a job). ``seq`` is the job's change
counter, so events of one job are ordered and a listener can resume after one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel

from shared.jobs.contract import JobStatus
from shared.jobs.record import JobErrorInfo, JobRecord

EventName = Literal["queued", "started", "progress", "retrying", "finished"]


class JobEvent(BaseModel):
    """One event of a job's event stream (the SSE ``data``)."""

    job_id: str
    event: EventName
    seq: int
    status: JobStatus
    attempts: int
    progress: Any = None
    error: JobErrorInfo | None = None
    result: Any = None  # finished events only
    finished_at: datetime | None = None  # finished events only

    @classmethod
    def from_message(cls, job_id: str, data: str | bytes) -> JobEvent:
        """Parse what ``job_changed`` published (JSON fields arrive as encoded strings)."""
        raw = orjson.loads(data)
        progress, error = raw.get("progress") or "", raw.get("error") or ""
        return cls(
            job_id=job_id,
            event=raw["event"],
            seq=int(raw["seq"]),
            status=JobStatus(raw["status"]),
            attempts=int(raw.get("attempts") or 0),
            progress=orjson.loads(progress) if progress else None,
            error=JobErrorInfo.model_validate_json(error) if error else None,
        )

    @classmethod
    def of(cls, record: JobRecord) -> JobEvent:
        """The event that describes a job's current state."""
        name: EventName
        if record.status.is_terminal:
            name = "finished"
        elif record.status is JobStatus.RUNNING:
            name = "progress" if record.progress is not None else "started"
        else:
            name = "retrying" if record.error is not None else "queued"
        final = record.status.is_terminal
        return cls(
            job_id=record.id,
            event=name,
            seq=record.seq,
            status=record.status,
            attempts=record.attempts,
            progress=record.progress,
            error=record.error,
            result=record.result if final else None,
            finished_at=record.finished_at if final else None,
        )
