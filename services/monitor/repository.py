"""Postgres persistence: alert episodes, silences, the notification log, history."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg

from services.monitor.clock import to_datetime, to_epoch
from services.monitor.lifecycle import Alert, AlertState
from services.monitor.matchers import matcher_from_json
from services.monitor.silences import Silence
from shared.db import Pool

_UPSERT_ALERT = """
INSERT INTO monitor_alerts (id, fingerprint, rule, severity, state, labels, annotations, value,
    active_at, fired_at, last_true_at, resolved_at, resolved_by, acknowledged_at, acknowledged_by,
    updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
ON CONFLICT (id) DO UPDATE SET
    state = EXCLUDED.state, annotations = EXCLUDED.annotations, value = EXCLUDED.value,
    fired_at = EXCLUDED.fired_at, last_true_at = EXCLUDED.last_true_at,
    resolved_at = EXCLUDED.resolved_at, resolved_by = EXCLUDED.resolved_by,
    acknowledged_at = EXCLUDED.acknowledged_at, acknowledged_by = EXCLUDED.acknowledged_by,
    updated_at = EXCLUDED.updated_at
"""


def _ts(value: float | None) -> Any:
    return to_datetime(value) if value is not None else None


def _alert_row(a: Alert) -> tuple[Any, ...]:
    a.refresh()
    return (
        a.id, a.fingerprint, a.rule, a.severity, a.state.value, a.labels, a.annotations, a.value,
        _ts(a.active_at), _ts(a.fired_at), _ts(a.last_true_at), _ts(a.resolved_at),
        a.resolved_by, _ts(a.acknowledged_at), a.acknowledged_by, _ts(a.updated_at),
    )  # fmt: skip


def alert_from_row(r: asyncpg.Record) -> Alert:
    return Alert(
        id=r["id"],
        fingerprint=r["fingerprint"],
        rule=r["rule"],
        severity=r["severity"],
        state=AlertState(r["state"]),
        labels=r["labels"],
        annotations=r["annotations"],
        value=r["value"],
        active_at=r["active_at"].timestamp(),
        last_true_at=r["last_true_at"].timestamp(),
        updated_at=r["updated_at"].timestamp(),
        fired_at=to_epoch(r["fired_at"]),
        resolved_at=to_epoch(r["resolved_at"]),
        resolved_by=r["resolved_by"],
        acknowledged_at=to_epoch(r["acknowledged_at"]),
        acknowledged_by=r["acknowledged_by"],
    )


@dataclass
class NflogEntry:
    """What a receiver was last told about a group, and when."""

    firing: frozenset[uuid.UUID]
    resolved: frozenset[uuid.UUID]
    sent_at: float


class Repository:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    # --- alerts ---------------------------------------------------------------------

    async def save_alerts(self, changed: list[Alert], deleted: Iterable[uuid.UUID]) -> None:
        """Persist one cycle's changes atomically; resolutions go first so a new
        episode of the same fingerprint never meets the old one still open."""
        ordered = sorted(changed, key=lambda a: a.state is not AlertState.RESOLVED)
        async with self.pool.acquire() as conn, conn.transaction():
            ids = list(deleted)
            if ids:
                await conn.execute("DELETE FROM monitor_alerts WHERE id = ANY($1::uuid[])", ids)
            if ordered:
                await conn.executemany(_UPSERT_ALERT, [_alert_row(a) for a in ordered])

    async def open_alerts(self) -> list[Alert]:
        rows = await self.pool.fetch("SELECT * FROM monitor_alerts WHERE state <> 'resolved'")
        return [alert_from_row(r) for r in rows]

    async def alerts_by_id(self, ids: Iterable[uuid.UUID]) -> list[Alert]:
        wanted = list(ids)
        if not wanted:
            return []
        rows = await self.pool.fetch(
            "SELECT * FROM monitor_alerts WHERE id = ANY($1::uuid[])", wanted
        )
        return [alert_from_row(r) for r in rows]

    async def alert(self, alert_id: uuid.UUID) -> Alert | None:
        found = await self.alerts_by_id([alert_id])
        return found[0] if found else None

    async def history(
        self, *, limit: int, before: float | None, filters: dict[str, str]
    ) -> list[Alert]:
        """Episodes newest first; ``before`` pages by ``active_at``."""
        rows = await self.pool.fetch(
            """SELECT * FROM monitor_alerts
               WHERE state <> 'pending' AND ($1::text IS NULL OR rule = $1)
                 AND ($2::text IS NULL OR severity = $2) AND ($3::text IS NULL OR state = $3)
                 AND ($4::timestamptz IS NULL OR active_at < $4)
               ORDER BY active_at DESC, id DESC LIMIT $5""",
            filters.get("rule"),
            filters.get("severity"),
            filters.get("state"),
            _ts(before),
            limit,
        )
        return [alert_from_row(r) for r in rows]

    async def statistics(self, since: float) -> dict[str, Any]:
        """Counts by rule and severity, and mean time to resolve, since a time."""
        async with self.pool.acquire() as conn:
            by_rule = await conn.fetch(
                """SELECT rule, severity, count(*) AS total,
                          count(*) FILTER (WHERE state = 'resolved') AS resolved,
                          avg(extract(epoch FROM resolved_at - active_at))
                              FILTER (WHERE state = 'resolved')::float8 AS mttr
                   FROM monitor_alerts WHERE active_at >= $1 AND state <> 'pending'
                   GROUP BY rule, severity ORDER BY total DESC, rule""",
                to_datetime(since),
            )
            by_state = await conn.fetch(
                "SELECT state, count(*) AS n FROM monitor_alerts WHERE active_at >= $1 "
                "GROUP BY state",
                to_datetime(since),
            )
        return {
            "by_rule": [dict(r) for r in by_rule],
            "by_state": {r["state"]: r["n"] for r in by_state},
        }

    async def apply_retention(self, now: float, days: int, keep: int) -> int:
        """Delete resolved episodes past the age or count limit (never one a receiver
        still has to hear is resolved), and old notification records."""
        horizon = to_datetime(now - days * 86_400)
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                """DELETE FROM monitor_alerts a
                   WHERE a.state = 'resolved'
                     AND (a.resolved_at < $1 OR a.id IN (
                          SELECT id FROM monitor_alerts WHERE state = 'resolved'
                          ORDER BY resolved_at DESC OFFSET $2))
                     AND NOT EXISTS (SELECT 1 FROM monitor_nflog n WHERE a.id = ANY(n.firing))""",
                horizon,
                keep,
            )
            await conn.execute(
                """DELETE FROM monitor_notifications WHERE created_at < $1 OR id IN (
                       SELECT id FROM monitor_notifications ORDER BY id DESC OFFSET $2)""",
                horizon,
                keep,
            )
            # A log entry that owes nothing and is older than the history is forgotten.
            await conn.execute(
                "DELETE FROM monitor_nflog WHERE cardinality(firing) = 0 AND sent_at < $1",
                horizon,
            )
        return int(status.split()[-1])

    # --- silences -------------------------------------------------------------------

    async def create_silence(self, silence: Silence) -> None:
        await self.pool.execute(
            """INSERT INTO monitor_silences
               (id, matchers, starts_at, ends_at, created_by, comment, created_at, updated_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
            silence.id,
            [m.to_json() for m in silence.matchers],
            to_datetime(silence.starts_at),
            to_datetime(silence.ends_at),
            silence.created_by,
            silence.comment,
            to_datetime(silence.created_at),
            to_datetime(silence.updated_at),
        )

    async def silences(self, *, since: float | None = None, limit: int = 500) -> list[Silence]:
        """Silences ending after ``since`` (all when None), newest first."""
        rows = await self.pool.fetch(
            "SELECT * FROM monitor_silences WHERE $1::timestamptz IS NULL OR ends_at > $1 "
            "ORDER BY created_at DESC LIMIT $2",
            _ts(since),
            limit,
        )
        return [_silence(r) for r in rows]

    async def expire_silence(self, silence_id: uuid.UUID, now: float) -> Silence | None:
        """End a silence now (a pending one never starts); None if unknown."""
        row = await self.pool.fetchrow(
            """UPDATE monitor_silences
               SET ends_at = LEAST(ends_at, $2), starts_at = LEAST(starts_at, $2), updated_at = $2
               WHERE id = $1 RETURNING *""",
            silence_id,
            to_datetime(now),
        )
        return _silence(row) if row else None

    # --- notification log -----------------------------------------------------------

    async def nflog(self) -> dict[tuple[str, str], NflogEntry]:
        rows = await self.pool.fetch("SELECT * FROM monitor_nflog")
        return {
            (r["receiver"], r["group_key"]): NflogEntry(
                frozenset(r["firing"]), frozenset(r["resolved"]), r["sent_at"].timestamp()
            )
            for r in rows
        }

    async def record_notification(
        self,
        receiver: str,
        group_key: str,
        *,
        entry: NflogEntry | None,
        status: str,
        outcome: str,
        attempts: int,
        alerts: list[dict[str, Any]],
        error: str | None,
        at: float,
    ) -> None:
        """Log an attempt; on success also move the nflog entry, in one transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            if entry is not None:
                await conn.execute(
                    """INSERT INTO monitor_nflog (receiver, group_key, firing, resolved, sent_at)
                       VALUES ($1, $2, $3, $4, $5)
                       ON CONFLICT (receiver, group_key) DO UPDATE SET firing = EXCLUDED.firing,
                           resolved = EXCLUDED.resolved, sent_at = EXCLUDED.sent_at""",
                    receiver,
                    group_key,
                    list(entry.firing),
                    list(entry.resolved),
                    to_datetime(entry.sent_at),
                )
            if outcome != "cleared":
                await conn.execute(
                    """INSERT INTO monitor_notifications
                       (receiver, group_key, status, outcome, attempts, alerts, error, created_at)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
                    receiver,
                    group_key,
                    status,
                    outcome,
                    attempts,
                    alerts,
                    error,
                    to_datetime(at),
                )

    async def notifications(self, limit: int) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT * FROM monitor_notifications ORDER BY id DESC LIMIT $1", limit
        )
        return [dict(r) for r in rows]


def _silence(r: asyncpg.Record) -> Silence:
    return Silence(
        id=r["id"],
        matchers=[matcher_from_json(m) for m in r["matchers"]],
        starts_at=r["starts_at"].timestamp(),
        ends_at=r["ends_at"].timestamp(),
        created_by=r["created_by"],
        comment=r["comment"],
        created_at=r["created_at"].timestamp(),
        updated_at=r["updated_at"].timestamp(),
    )
