"""Where a job waits: its queue kind, its Telegram shard and its priority band.

Telegram jobs are partitioned by account: an account maps to one of S shard queues by a
stable hash of its id, so every job of one account waits in one queue, and the worker
holding that shard's lease is the only one that runs them (and the only one connected
to the account). AI and control jobs wait in one queue per kind.

Priority lives in the ARQ score. A queue's sorted set is scored by due time in epoch
milliseconds; a high-priority job is scored ``HIGH_SHIFT_MS`` earlier, which puts every
high job in a band below every normal one. A consumer reads the due part of each band
(high first), so high jobs are served first without ever starting before their time.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from shared.jobs.contract import QueueKind, queue_key

HIGH_SHIFT_MS = 1 << 40  # about 35 years
BAND_EDGE_MS = 1 << 40  # 2004-11-03: normal scores lie above, high scores below (until 2039)


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"


def shard_of(account_id: uuid.UUID | str, shards: int) -> int:
    """The shard of an account: stable across processes, versions and restarts."""
    raw = account_id.bytes if isinstance(account_id, uuid.UUID) else uuid.UUID(account_id).bytes
    digest = hashlib.blake2b(raw, digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def shard_lease_key(shard: int) -> str:
    """The Redis key whose holder owns the shard (read by the monitor too)."""
    return f"tgflow:lease:shard:{shard}"


def shard_queue(shard: int) -> str:
    return f"{queue_key(QueueKind.TELEGRAM)}:{shard}"


@dataclass(frozen=True)
class Route:
    kind: QueueKind
    shard: int | None = None

    @property
    def queue(self) -> str:
        """The Redis key of the ARQ sorted set."""
        return queue_key(self.kind) if self.shard is None else shard_queue(self.shard)

    @property
    def nudge(self) -> str:
        """What the wake-up message names: the shard, or the kind for unsharded queues."""
        return self.kind.value if self.shard is None else str(self.shard)


def route_of(kind: QueueKind, params: Mapping[str, Any], shards: int) -> Route:
    """Telegram jobs go to their account's shard; everything else to its kind's queue."""
    if kind is QueueKind.TELEGRAM:
        return Route(kind, shard_of(str(params["account_id"]), shards))
    return Route(kind)


def all_queues(kind: QueueKind, shards: int) -> list[str]:
    """Every sorted-set key a kind of job may wait in."""
    if kind is QueueKind.TELEGRAM:
        return [shard_queue(n) for n in range(shards)]
    return [queue_key(kind)]


def score_of(due_ms: int, priority: Priority | str) -> int:
    return due_ms - HIGH_SHIFT_MS if priority == Priority.HIGH else due_ms


def due_ms_of(score: float) -> float:
    """The due time behind a score, whatever its band."""
    return score + HIGH_SHIFT_MS if score < BAND_EDGE_MS else score


def is_high(score: float) -> bool:
    return score < BAND_EDGE_MS
