"""Postgres: connections by state, database size and slow queries.

Slow queries come from pg_stat_statements when the extension is installed and
loaded; otherwise from the statements running now for longer than the threshold
(pg_stat_activity), which needs nothing extra on the server.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from services.monitor.collectors import Collected, Context
from services.monitor.samples import Sample

_RUNNING = """
SELECT pid, application_name, wait_event_type,
       extract(epoch FROM now() - query_start) * 1000 AS running_ms, left(query, 500) AS query
FROM pg_stat_activity
WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()
  AND query_start < now() - make_interval(secs => $1 / 1000.0)
ORDER BY query_start LIMIT 20
"""
_STATEMENTS = """
SELECT left(query, 500) AS query, calls, mean_exec_time AS mean_ms, max_exec_time AS max_ms,
       total_exec_time AS total_ms
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND mean_exec_time > $1
ORDER BY mean_exec_time DESC LIMIT 20
"""
_STATES = """
SELECT coalesce(state, 'background') AS state, count(*) AS n FROM pg_stat_activity
WHERE datname = current_database() GROUP BY 1
"""


class PostgresCollector:
    name = "postgres"
    produces = frozenset(
        {
            "tgflow_db_connections",
            "tgflow_db_max_connections",
            "tgflow_db_size_bytes",
            "tgflow_db_slow_queries",
            "tgflow_db_slow_statements",
        }
    )

    async def collect(self, ctx: Context) -> Collected:
        threshold = ctx.settings.monitor_slow_query_ms
        async with ctx.db.acquire() as conn:
            states = await conn.fetch(_STATES)
            size = await conn.fetchval("SELECT pg_database_size(current_database())")
            max_conn = await conn.fetchval("SELECT current_setting('max_connections')::int")
            running = await conn.fetch(_RUNNING, threshold)
            statements, note = await _statements(conn, threshold)
        out = [
            Sample(
                "tgflow_db_connections", float(r["n"]), {"state": r["state"]}, "Backends by state."
            )
            for r in states
        ]
        out += [
            Sample("tgflow_db_max_connections", float(max_conn), {}, "Server connection limit."),
            Sample("tgflow_db_size_bytes", float(size), {}, "Size of the tgflow database."),
            Sample(
                "tgflow_db_slow_queries",
                float(len(running)),
                {"source": "pg_stat_activity"},
                "Statements running longer than the slow threshold.",
            ),
        ]
        if statements is not None:
            out.append(
                Sample(
                    "tgflow_db_slow_statements",
                    float(len(statements)),
                    {"source": "pg_stat_statements"},
                    "Statements whose mean time exceeds the slow threshold.",
                )
            )
        return Collected(
            out,
            {
                "threshold_ms": threshold,
                "connections": {r["state"]: r["n"] for r in states},
                "max_connections": max_conn,
                "size_bytes": size,
                "running": [_row(r) for r in running],
                "statements": [_row(r) for r in statements or []],
                "statements_source": note,
            },
        )


async def _statements(
    conn: PoolConnectionProxy[asyncpg.Record], threshold: float
) -> tuple[list[asyncpg.Record] | None, str]:
    installed = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements')"
    )
    if not installed:
        return None, "pg_stat_statements is not installed; showing running statements only"
    try:
        async with conn.transaction():  # a failure must not poison the connection
            return await conn.fetch(_STATEMENTS, threshold), "pg_stat_statements"
    except asyncpg.PostgresError as exc:
        return None, f"pg_stat_statements unavailable: {exc}"


def _row(record: asyncpg.Record) -> dict[str, Any]:
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in dict(record).items()}
