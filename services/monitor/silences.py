"""Silences: label matchers with a time range; matching alerts are not notified."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from services.monitor.clock import iso
from services.monitor.matchers import Matcher, match_all


@dataclass
class Silence:
    id: uuid.UUID
    matchers: list[Matcher]
    starts_at: float
    ends_at: float
    created_by: str
    comment: str
    created_at: float
    updated_at: float

    def state(self, now: float) -> str:
        if now >= self.ends_at:
            return "expired"
        return "active" if now >= self.starts_at else "pending"

    def mutes(self, labels: dict[str, str], now: float) -> bool:
        return self.starts_at <= now < self.ends_at and match_all(self.matchers, labels)

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "matchers": [m.to_json() for m in self.matchers],
            "starts_at": iso(self.starts_at),
            "ends_at": iso(self.ends_at),
            "state": self.state(now),
            "created_by": self.created_by,
            "comment": self.comment,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }
