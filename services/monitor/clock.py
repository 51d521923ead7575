"""Time as the monitor sees it: injectable so tests drive rules, silences and grouping."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        self.t += seconds
        return self.t


def to_datetime(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def to_epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def iso(ts: float | None) -> str | None:
    return to_datetime(ts).isoformat() if ts is not None else None
