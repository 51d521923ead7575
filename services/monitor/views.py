"""Read-only views over the latest collection: pool, Redis, system, metrics, dashboard."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.monitor.api import alert_json, rules_view
from services.monitor.clock import iso
from services.monitor.engine import Engine
from services.monitor.http import json_response
from services.monitor.lifecycle import AlertState
from services.monitor.rules.model import Severity
from services.monitor.store import Series

POOL_WARNING, POOL_CRITICAL = 0.75, 0.9


def series_json(series: list[Series]) -> list[dict[str, Any]]:
    return [{"name": s.name, "labels": s.labels, "value": s.latest()} for s in series]


def current(engine: Engine, prefix: str = "") -> list[Series]:
    found = [s for s in engine.sampler.store.current() if s.name.startswith(prefix)]
    found.sort(key=lambda s: (s.name, s.key))
    return found


def _processes(engine: Engine) -> list[dict[str, Any]]:
    """One entry per (process, pool role) from the scraped pool gauges."""
    fields = {
        "tgflow_db_pool_size": "size",
        "tgflow_db_pool_in_use": "in_use",
        "tgflow_db_pool_available": "available",
        "tgflow_db_pool_max": "max",
        "tgflow_db_pool_utilization": "utilization",
        "tgflow_db_pool_free": "free",
        "tgflow_db_pool_waiters": "waiters",
    }
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for s in current(engine, "tgflow_db_pool_"):
        if s.name not in fields:
            continue
        key = (s.labels.get("instance", ""), s.labels.get("role", ""))
        entry = out.setdefault(
            key,
            {"instance": key[0], "kind": s.labels.get("kind"), "role": key[1], "waiters": None},
        )
        entry[fields[s.name]] = s.latest()
    return list(out.values())


def _pool_status(processes: list[dict[str, Any]]) -> str:
    if not processes:
        return "unknown"
    worst = max(p.get("utilization", 0.0) for p in processes)
    if worst >= POOL_CRITICAL:
        return "critical"
    return "warning" if worst >= POOL_WARNING else "healthy"


def pool_status(engine: Engine) -> dict[str, Any]:
    processes = _processes(engine)
    details = engine.sampler.details.get("postgres", {})
    return {
        "status": _pool_status(processes),
        "processes": processes,
        "database": {k: details.get(k) for k in ("connections", "max_connections", "size_bytes")},
        "collectors": {
            n: engine.sampler.status[n].to_json()
            for n in ("postgres", "scrape")
            if n in engine.sampler.status
        },
    }


def pool_statistics(engine: Engine) -> dict[str, Any]:
    """Average and peak utilisation per process over the samples the monitor keeps."""
    store = engine.sampler.store
    out = []
    for series in store.by_name.get("tgflow_db_pool_utilization", {}).values():
        values = series.values
        out.append(
            {
                "instance": series.labels.get("instance"),
                "role": series.labels.get("role"),
                "samples": len(values),
                "since": iso(series.times[0]) if series.times else None,
                "utilization_avg": sum(values) / len(values) if values else None,
                "utilization_max": max(values) if values else None,
                "current": store.is_current(series),
            }
        )
    return {"window_seconds": store.retention, "processes": out}


def slow_queries(engine: Engine) -> dict[str, Any]:
    details = engine.sampler.details.get("postgres", {})
    status = engine.sampler.status.get("postgres")
    return {
        "threshold_ms": details.get("threshold_ms"),
        "running": details.get("running", []),
        "statements": details.get("statements", []),
        "statements_source": details.get("statements_source"),
        "collector": status.to_json() if status else None,
    }


def _latest(engine: Engine, name: str) -> float | None:
    for s in engine.sampler.store.by_name.get(name, {}).values():
        if engine.sampler.store.is_current(s):
            return s.latest()
    return None


def redis_status(engine: Engine) -> dict[str, Any]:
    details = engine.sampler.details.get("redis", {})
    up = _latest(engine, "tgflow_redis_up")
    status = "unknown" if up is None else ("connected" if up else "disconnected")
    keys = {
        "used_memory_bytes": "tgflow_redis_used_memory_bytes",
        "maxmemory_bytes": "tgflow_redis_maxmemory_bytes",
        "memory_used_ratio": "tgflow_redis_memory_used_ratio",
        "hit_ratio": "tgflow_redis_hit_ratio",
        "ops_per_second": "tgflow_redis_ops_per_second",
        "connected_clients": "tgflow_redis_connected_clients",
        "evicted_keys": "tgflow_redis_evicted_keys_total",
        "slowlog_length": "tgflow_redis_slowlog_length",
    }
    return {
        "status": status,
        "error": details.get("error"),
        **{k: _latest(engine, name) for k, name in keys.items()},
    }


def system_health(engine: Engine) -> dict[str, Any]:
    collectors = {n: s.to_json() for n, s in engine.sampler.status.items()}
    failing = [n for n, s in engine.sampler.status.items() if s.state == "error"]
    redis = redis_status(engine)["status"]
    components = {
        "redis": redis,
        "postgres": _state(engine, "postgres"),
        "workers_live": _latest(engine, "tgflow_workers_live"),
    }
    down = redis == "disconnected" or components["postgres"] == "error"
    return {
        "status": "down" if down else ("degraded" if failing else "ok"),
        "components": components,
        "collectors": collectors,
        "host": series_json(current(engine, "tgflow_host_")),
        "monitor": {
            "last_cycle_at": iso(engine.last_cycle_at),
            "cycles": engine.cycles,
            "interval_seconds": engine.interval,
            "rules": len(engine.rules),
            "series": sum(len(v) for v in engine.sampler.store.by_name.values()),
            "evaluation_seconds": round(engine.last_eval_seconds, 6),
        },
    }


def _state(engine: Engine, collector: str) -> str:
    status = engine.sampler.status.get(collector)
    return status.state if status else "unknown"


def overview(engine: Engine) -> dict[str, Any]:
    now = engine.clock.now()
    open_alerts = sorted(
        engine.tracker.open.values(), key=lambda a: (-Severity(a.severity).rank, a.active_at)
    )
    by_state = {s.value: 0 for s in AlertState if s is not AlertState.RESOLVED}
    by_severity = {s.value: 0 for s in Severity}
    for alert in open_alerts:
        by_state[alert.state.value] += 1
        if alert.state is not AlertState.PENDING:
            by_severity[alert.severity] = by_severity.get(alert.severity, 0) + 1
    health: dict[str, int] = {}
    for rule in rules_view(engine):
        h = rule["last_evaluation"]["health"]
        health[h] = health.get(h, 0) + 1
    return {
        "generated_at": iso(now),
        "health": system_health(engine),
        "alerts": {
            "by_state": by_state,
            "by_severity": by_severity,
            "top": [alert_json(a, now) for a in open_alerts if a.state is not AlertState.PENDING][
                :10
            ],
        },
        "silences_active": sum(s.state(now) == "active" for s in engine.silences),
        "rules": health,
        "queues": engine.sampler.details.get("queues", {}),
        "workers": engine.sampler.details.get("workers", {}).get("workers", []),
        "pool": {"status": _pool_status(_processes(engine)), "processes": _processes(engine)},
        "redis": redis_status(engine),
        "notifications": {
            "receivers": {n: s.to_json() for n, s in engine.dispatcher.status.items()},
            "groups": engine.dispatcher.groups_json(),
        },
    }


def routes(engine: Engine) -> list[Route]:
    def view(build: Callable[[], Any]) -> Callable[[Request], Any]:
        async def handler(_: Request) -> Response:
            return json_response(build())

        return handler

    async def notifications(request: Request) -> Response:
        rows = await engine.repo.notifications(limit=100)
        return json_response({"notifications": rows})

    def metrics_all() -> dict[str, Any]:
        return {
            "sampled_at": iso(engine.sampler.last_run),
            "collectors": {n: s.to_json() for n, s in engine.sampler.status.items()},
            "series": series_json(current(engine)),
        }

    p = "/v1/monitoring"
    details = engine.sampler.details
    return [
        Route(f"{p}/pool/status", view(lambda: pool_status(engine))),
        Route(
            f"{p}/pool/metrics",
            view(lambda: {"series": series_json(current(engine, "tgflow_db_"))}),
        ),
        Route(f"{p}/pool/statistics", view(lambda: pool_statistics(engine))),
        Route(f"{p}/pool/slow-queries", view(lambda: slow_queries(engine))),
        Route(f"{p}/redis/status", view(lambda: redis_status(engine))),
        Route(
            f"{p}/redis/metrics",
            view(lambda: {"series": series_json(current(engine, "tgflow_redis_"))}),
        ),
        Route(f"{p}/redis/info", view(lambda: {"info": details.get("redis", {}).get("info")})),
        Route(
            f"{p}/redis/slow-log",
            view(
                lambda: {
                    "entries": details.get("redis", {}).get("slowlog", []),
                    "length": details.get("redis", {}).get("slowlog_length"),
                }
            ),
        ),
        Route(f"{p}/system/health", view(lambda: system_health(engine))),
        Route(f"{p}/metrics/all", view(metrics_all)),
        Route(f"{p}/dashboard/overview", view(lambda: overview(engine))),
        Route(f"{p}/notifications", notifications),
    ]
