"""What travels through Redis for one job: ids and context, never rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict

from shared.jobs.routing import Priority


class Envelope(BaseModel):
    """The single ARQ argument of every job."""

    model_config = ConfigDict(frozen=True)

    id: str
    type: str
    tenant: str
    params: dict[str, Any]
    timeout: float
    created_at: AwareDatetime
    run_at: AwareDatetime
    idempotency_key: str | None = None
    trace: dict[str, str] = {}
    priority: Priority = Priority.NORMAL
    webhook_url: str | None = None  # POSTed to when the job finishes


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_micros(ts: datetime) -> int:
    """Epoch microseconds: exact, sortable, cheap to keep in Redis."""
    return (ts - _EPOCH) // timedelta(microseconds=1)


def from_micros(value: int | str) -> datetime:
    return _EPOCH + timedelta(microseconds=int(value))
