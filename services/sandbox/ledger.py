"""Every connection the sandbox accepted, and when each auth key was live twice."""

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .keys import format_key_id

MAX_CLOSED = 50_000


@dataclass
class ConnRecord:
    id: int
    peer: str
    opened: float = field(default_factory=time.time)
    closed: float | None = None
    transport: str | None = None
    auth_key_id: int | None = None
    key_seen: float | None = None
    close_reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "peer": self.peer,
            "transport": self.transport,
            "auth_key_id": None if self.auth_key_id is None else format_key_id(self.auth_key_id),
            "opened": self.opened,
            "key_seen": self.key_seen,
            "closed": self.closed,
            "close_reason": self.close_reason,
        }


@dataclass(frozen=True)
class Overlap:
    auth_key_id: int
    start: float
    end: float | None
    connections: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "auth_key_id": format_key_id(self.auth_key_id),
            "start": self.start,
            "end": self.end,
            "connections": list(self.connections),
        }


class Ledger:
    """Open and closed connections; closed ones are capped to bound memory."""

    def __init__(self) -> None:
        self._next = 0
        self.live: dict[int, ConnRecord] = {}
        self.closed: deque[ConnRecord] = deque(maxlen=MAX_CLOSED)

    def open(self, peer: str) -> ConnRecord:
        self._next += 1
        record = ConnRecord(self._next, peer)
        self.live[record.id] = record
        return record

    def bind_key(self, record: ConnRecord, key_id: int) -> None:
        if record.auth_key_id is None:
            record.auth_key_id = key_id
            record.key_seen = time.time()

    def close(self, record: ConnRecord, reason: str, at: float | None = None) -> None:
        """Mark closed, at ``at`` when the peer's EOF time is known."""
        if self.live.pop(record.id, None) is not None:
            record.closed = time.time() if at is None else at
            record.close_reason = reason
            self.closed.append(record)

    def live_with_key(self, key_id: int) -> list[ConnRecord]:
        return [r for r in self.live.values() if r.auth_key_id == key_id]

    def records(self) -> list[ConnRecord]:
        return sorted([*self.closed, *self.live.values()], key=lambda r: r.id)

    def overlaps(self) -> list[Overlap]:
        """Each interval during which one auth key had two or more live connections."""
        by_key: dict[int, list[ConnRecord]] = {}
        for record in self.records():
            if record.auth_key_id is not None and record.key_seen is not None:
                by_key.setdefault(record.auth_key_id, []).append(record)
        found: list[Overlap] = []
        for key_id, records in by_key.items():
            if len(records) > 1:
                found.extend(_sweep(key_id, records))
        return sorted(found, key=lambda o: o.start)

    def clear(self) -> None:
        self.closed.clear()


def _sweep(key_id: int, records: list[ConnRecord]) -> list[Overlap]:
    # Events sorted by time; at equal times a close comes before an open, so
    # a hand-off at the same instant is not an overlap.
    events: list[tuple[float, int, int]] = []
    for r in records:
        assert r.key_seen is not None
        events.append((r.key_seen, 1, r.id))
        events.append((r.closed if r.closed is not None else float("inf"), 0, r.id))
    events.sort()
    live: set[int] = set()
    involved: set[int] = set()
    start: float | None = None
    result: list[Overlap] = []
    for at, is_open, conn_id in events:
        if is_open:
            live.add(conn_id)
        else:
            live.discard(conn_id)
        if len(live) >= 2:
            start = at if start is None else start
            involved |= live
        elif start is not None:
            end = None if at == float("inf") else at
            result.append(Overlap(key_id, start, end, tuple(sorted(involved))))
            start, involved = None, set()
    return result
