"""The monitor API: alerts, history and statistics, silences, rules, and the views."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from services.monitor.app import build_app
from services.monitor.clock import ManualClock, to_datetime
from services.monitor.collectors import Context
from services.monitor.collectors.postgres import PostgresCollector
from services.monitor.collectors.queues import QueuesCollector
from services.monitor.collectors.redis import RedisCollector
from services.monitor.collectors.system import SystemCollector
from services.monitor.engine import Engine
from shared.config import MonitorSettings
from tests.monitor.conftest import StaticCollector

RULES = """
rules:
  - name: High
    expr: load > 1
    severity: critical
    annotations: {summary: "{{ $labels.svc }} is high"}
  - name: Low
    expr: load < 0
    for: 1m
    severity: info
  - name: Missing
    expr: nothing_here > 1
    severity: warning
"""


@pytest.fixture
async def setup(
    engine_factory: Callable[..., Engine], clock: ManualClock
) -> AsyncIterator[tuple[Engine, StaticCollector, httpx.AsyncClient]]:
    src = StaticCollector("src", {"load"})
    pool = StaticCollector(
        "scrape", {"tgflow_db_pool_utilization", "tgflow_db_pool_free", "tgflow_db_pool_max"}
    )
    engine = engine_factory(
        RULES,
        None,
        [
            src,
            pool,
            PostgresCollector(),
            RedisCollector(),
            QueuesCollector(),
            SystemCollector(["/"]),
        ],
    )
    await engine.start()
    app = build_app(engine, MonitorSettings())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://m") as c:
        yield engine, src, c


async def cycle_at(engine: Engine, clock: ManualClock, t: float) -> None:
    clock.t = 1_700_000_000.0 + t
    await engine.cycle()
    await engine.dispatcher.idle()


async def get(client: httpx.AsyncClient, path: str, **params: Any) -> Any:
    r = await client.get("/v1/monitoring" + path, params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def test_alert_actions_history_and_statistics(
    setup: tuple[Engine, StaticCollector, httpx.AsyncClient], clock: ManualClock
) -> None:
    engine, src, client = setup
    src.set("load", 5, svc="a")
    src.set("load", 7, svc="b")
    await cycle_at(engine, clock, 0)
    active = (await get(client, "/alerts/active"))["alerts"]
    assert [a["rule"] for a in active] == ["High", "High", "Missing"]  # critical first
    assert active[2]["state"] == "nodata"
    by_svc = {a["labels"].get("svc"): a for a in active}
    a_id, b_id = by_svc["a"]["id"], by_svc["b"]["id"]
    assert by_svc["a"]["annotations"] == {"summary": "a is high"}
    assert (await get(client, "/alerts/active", severity="warning"))["count"] == 1
    assert (await get(client, f"/alerts/{a_id}"))["state"] == "firing"

    r = await client.post(f"/v1/monitoring/alerts/{a_id}/acknowledge", json={"by": "ann"})
    assert r.json()["acknowledged_by"] == "ann"
    clock.t += 30
    r = await client.post(f"/v1/monitoring/alerts/{b_id}/resolve", json={"by": "bob"})
    assert (r.json()["state"], r.json()["resolved_by"]) == ("resolved", "manual:bob")
    r = await client.post(f"/v1/monitoring/alerts/{b_id}/resolve", json={})
    assert (r.status_code, r.json()["error"]["code"]) == (409, "alert_resolved")
    r = await client.post(f"/v1/monitoring/alerts/{b_id}/acknowledge")
    assert r.status_code == 409
    r = await client.post("/v1/monitoring/alerts/00000000-0000-0000-0000-000000000000/resolve")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "alert_not_found")
    r = await client.post("/v1/monitoring/alerts/not-a-uuid/acknowledge")
    assert r.status_code == 404
    r = await client.post(f"/v1/monitoring/alerts/{a_id}/acknowledge", json={"by": ""})
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["field"] == "by"
    r = await client.post(f"/v1/monitoring/alerts/{a_id}/acknowledge", json={"who": "x"})
    assert r.status_code == 422
    # PostgreSQL cannot keep a NUL: refused here, not left to fail every later save.
    r = await client.post(f"/v1/monitoring/alerts/{a_id}/acknowledge", json={"by": "x\x00"})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_character")
    assert r.json()["error"]["details"][0]["field"] == "by"
    r = await client.get("/v1/monitoring/alerts/history", params={"rule": "a\x00"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_character")
    r = await client.get("/v1/monitoring/alerts/%01")
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_character")
    # Times and windows no date arithmetic can take are refused, not a 500.
    for path, params in [
        ("/v1/monitoring/alerts/history", {"before": "0001-01-01T00:00:00+23:59"}),
        ("/v1/monitoring/alerts/history", {"before": "9999-12-31T23:59:59-23:59"}),
        ("/v1/monitoring/alerts/statistics", {"window": "99999999999999999999d"}),
    ]:
        r = await client.get(path, params=params)
        assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_request"), params

    # A resolved alert's condition still holds: the next evaluation opens a new episode.
    await cycle_at(engine, clock, 60)
    src.set("load", 0, svc="a")
    await cycle_at(engine, clock, 120)
    history = (await get(client, "/alerts/history", rule="High"))["alerts"]
    assert (history[0]["labels"]["svc"], history[0]["state"]) == ("b", "firing")  # newest
    older_two = {h["labels"]["svc"]: h for h in history[1:]}
    assert {k: h["state"] for k, h in older_two.items()} == {"a": "resolved", "b": "resolved"}
    assert older_two["a"]["acknowledged_by"] == "ann"
    assert older_two["a"]["duration_seconds"] == 120
    assert older_two["b"]["duration_seconds"] == 30
    page = await get(client, "/alerts/history", limit=1)
    assert page["next_before"] is not None
    older = await get(client, "/alerts/history", limit=10, before=page["next_before"])
    assert {h["id"] for h in older["alerts"]}.isdisjoint({page["alerts"][0]["id"]})
    r = await client.get("/v1/monitoring/alerts/history", params={"severity": "loud"})
    assert r.status_code == 422

    stats = await get(client, "/alerts/statistics", window="1d")
    high = next(r for r in stats["by_rule"] if r["rule"] == "High")
    assert (high["total"], high["resolved"]) == (3, 2)
    assert high["mean_time_to_resolve_seconds"] == pytest.approx((120 + 30) / 2)
    assert stats["by_severity"] == {"critical": 3, "warning": 1}
    assert stats["open"] == {"firing": 1, "nodata": 1}


async def test_silences_through_the_api(
    setup: tuple[Engine, StaticCollector, httpx.AsyncClient], clock: ManualClock
) -> None:
    engine, src, client = setup
    src.set("load", 5, svc="a")
    await cycle_at(engine, clock, 0)
    (alert,) = (await get(client, "/alerts/active", rule="High"))["alerts"]
    r = await client.post(f"/v1/monitoring/alerts/{alert['id']}/silence", json={"duration": "30m"})
    assert r.status_code == 201
    silence = r.json()
    assert {"name": "svc", "op": "=", "value": "a"} in silence["matchers"]
    assert silence["state"] == "active"
    await cycle_at(engine, clock, 15)
    (alert,) = (await get(client, "/alerts/active", rule="High"))["alerts"]
    assert alert["muted_by"] == [f"silence:{silence['id']}"]

    bad = [
        ({"matchers": [{"name": "svc", "op": "=", "value": "a\x00"}]}, "NUL"),
        ({}, "matchers"),
        ({"matchers": []}, "matchers"),
        ({"matchers": ['svc=~".*"']}, "every alert"),
        ({"matchers": ['svc=~"("']}, "regular expression"),
        ({"matchers": [{"name": "svc", "op": "~", "value": "a"}]}, "operator"),
        ({"matchers": ['svc="a"'], "duration": "-5m"}, "duration"),
        (
            {"matchers": ['svc="a"'], "duration": "1h", "ends_at": "2030-01-01T00:00:00Z"},
            "not both",
        ),
        ({"matchers": ['svc="a"'], "ends_at": "2001-01-01T00:00:00Z"}, "after"),
        ({"matchers": ['svc="a"'], "ends_at": "2031-01-01T00:00:00"}, "timezone"),
        ({"matchers": ['svc="a"'], "starts_at": "9999-12-31T23:59:59-23:59"}, "range"),
    ]
    for body, message in bad:
        r = await client.post("/v1/monitoring/silences", json=body)
        assert r.status_code == 422, body
        assert message in str(r.json()["error"]), (body, r.json())
    r = await client.post(
        "/v1/monitoring/silences",
        json={"matchers": [{"name": "svc", "op": "=~", "value": "b|c"}],
              "starts_at": "2023-11-15T00:00:00Z", "duration": "1h", "created_by": "ops"},
    )  # fmt: skip
    assert r.status_code == 201
    assert r.json()["state"] == "pending"
    listed = (await get(client, "/silences"))["silences"]
    assert sorted(s["state"] for s in listed) == ["active", "pending"]
    r = await client.delete(f"/v1/monitoring/silences/{silence['id']}")
    assert r.json()["state"] == "expired"
    assert (await get(client, "/silences", state="expired"))["count"] == 1
    r = await client.get("/v1/monitoring/silences", params={"state": "sleeping"})
    assert r.status_code == 422
    await cycle_at(engine, clock, 30)
    (alert,) = (await get(client, "/alerts/active", rule="High"))["alerts"]
    assert alert["muted_by"] == []


async def test_rules_views_and_dashboard(
    setup: tuple[Engine, StaticCollector, httpx.AsyncClient],
    clock: ManualClock,
    pg: asyncpg.Connection[Any],
    redis: Redis,
) -> None:
    engine, src, client = setup
    pool = next(c for c in engine.sampler.collectors if c.name == "scrape")
    assert isinstance(pool, StaticCollector)
    pool.set("tgflow_db_pool_utilization", 0.95, instance="w1", kind="worker", role="worker")
    pool.set("tgflow_db_pool_free", 1, instance="w1", kind="worker", role="worker")
    pool.set("tgflow_db_pool_max", 20, instance="w1", kind="worker", role="worker")
    src.set("load", -1, svc="z")
    await redis.zadd("tgflow:queue:ai", {"j": clock.now() * 1000 - 5000})
    await cycle_at(engine, clock, 0)
    await cycle_at(engine, clock, 15)

    rules = {r["name"]: r for r in (await get(client, "/rules"))["rules"]}
    assert rules["Low"]["for"] == "1m"
    assert rules["Low"]["alerts"] == {"pending": 1}
    assert rules["Low"]["last_evaluation"]["health"] == "ok"
    assert rules["Low"]["last_evaluation"]["matches"] == 1
    assert rules["Missing"]["last_evaluation"]["health"] == "nodata"
    assert rules["Missing"]["last_evaluation"]["at"] == "2023-11-14T22:13:35+00:00"

    status = await get(client, "/pool/status")
    assert status["status"] == "critical"
    (proc,) = status["processes"]
    assert (proc["instance"], proc["utilization"], proc["free"], proc["max"]) == ("w1", 0.95, 1, 20)
    assert proc["waiters"] is None  # services do not expose pool waiters (yet)
    assert status["database"]["size_bytes"] > 0
    stats = await get(client, "/pool/statistics")
    assert stats["processes"][0]["samples"] == 2
    assert stats["processes"][0]["utilization_max"] == 0.95
    names = {s["name"] for s in (await get(client, "/pool/metrics"))["series"]}
    assert {"tgflow_db_pool_utilization", "tgflow_db_size_bytes", "tgflow_db_connections"} <= names
    slow = await get(client, "/pool/slow-queries")
    assert slow["threshold_ms"] == 1000
    assert slow["running"] == []

    redis_status = await get(client, "/redis/status")
    assert redis_status["status"] == "connected"
    assert redis_status["used_memory_bytes"] > 0
    assert "redis_version" in (await get(client, "/redis/info"))["info"]
    assert "entries" in await get(client, "/redis/slow-log")
    assert all(
        s["name"].startswith("tgflow_redis_")
        for s in (await get(client, "/redis/metrics"))["series"]
    )

    health = await get(client, "/system/health")
    assert health["status"] == "ok"
    assert health["components"]["redis"] == "connected"
    assert health["monitor"]["cycles"] == 2
    assert health["monitor"]["rules"] == 3
    assert {s["name"] for s in health["host"]} >= {"tgflow_host_cpu_utilization"}
    everything = await get(client, "/metrics/all")
    assert any(s["name"] == "load" for s in everything["series"])
    assert everything["collectors"]["src"]["state"] == "ok"

    await cycle_at(engine, clock, 30)  # the log receiver's group_wait has passed
    overview = await get(client, "/dashboard/overview")
    assert overview["alerts"]["by_state"] == {"pending": 1, "firing": 0, "nodata": 1, "error": 0}
    assert overview["alerts"]["by_severity"]["warning"] == 1
    assert overview["rules"] == {"ok": 2, "nodata": 1}
    assert overview["queues"]["ai"]["depth"] == 1
    assert overview["pool"]["status"] == "critical"
    assert overview["redis"]["status"] == "connected"
    assert overview["notifications"]["receivers"]["log"]["sent"] == 1
    assert (await get(client, "/notifications"))["notifications"][0]["receiver"] == "log"

    r = await client.get("/v1/monitoring/nope")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
    r = await client.delete("/v1/monitoring/rules")
    assert (r.status_code, r.json()["error"]["code"]) == (405, "method_not_allowed")


async def test_a_failing_collector_shows_in_health(
    setup: tuple[Engine, StaticCollector, httpx.AsyncClient], clock: ManualClock
) -> None:
    engine, src, client = setup
    src.failure = TimeoutError()
    await cycle_at(engine, clock, 0)
    health = await get(client, "/system/health")
    assert health["status"] == "degraded"
    assert health["collectors"]["src"]["state"] == "error"
    assert health["collectors"]["src"]["error"] == "timed out after 2s"
    rules = {r["name"]: r for r in (await get(client, "/rules"))["rules"]}
    assert rules["High"]["last_evaluation"]["health"] == "error"
    r = await client.get("/healthz")
    assert r.json()["collector_errors"] == {"src": "timed out after 2s"}


async def test_history_retention_keeps_owed_resolutions(
    engine_factory: Callable[..., Engine],
    clock: ManualClock,
    pg: asyncpg.Connection[Any],
    ctx: Context,
) -> None:
    src = StaticCollector("src", {"load"})
    quiet = {"receivers": [{"name": "log", "kind": "log"}],
             "route": {"receiver": "log", "group_wait": "1h"}}  # fmt: skip
    engine = engine_factory(RULES, quiet, [src])
    await engine.start()
    for i in range(4):
        src.set("load", 5, svc=f"s{i}")
    await cycle_at(engine, clock, 0)
    src.set("load", 0, svc="s0")
    await cycle_at(engine, clock, 60)
    for i in range(1, 4):
        src.set("load", 0, svc=f"s{i}")
    await cycle_at(engine, clock, 75)
    assert await pg.fetchval("SELECT count(*) FROM monitor_alerts WHERE state = 'resolved'") == 4
    # Keep 2 by count: of the 2 older, s0 is still owed to a receiver and survives.
    owed = await pg.fetchval("SELECT id FROM monitor_alerts WHERE labels->>'svc' = 's0'")
    await pg.execute(
        "INSERT INTO monitor_nflog VALUES ('r', 'g', ARRAY[$1::uuid], '{}', now())", owed
    )
    deleted = await engine.repo.apply_retention(clock.now(), days=30, keep=2)
    assert deleted == 1
    assert await pg.fetchval("SELECT count(*) FROM monitor_alerts WHERE state = 'resolved'") == 3
    # By age: everything resolved long ago goes, except what is owed.
    await pg.execute(
        "INSERT INTO monitor_nflog VALUES ('r', 'old', '{}', '{}', $1)", to_datetime(clock.now())
    )
    deleted = await engine.repo.apply_retention(clock.now() + 40 * 86_400, days=30, keep=100)
    assert deleted == 2
    assert await pg.fetchval("SELECT count(*) FROM monitor_alerts WHERE state = 'resolved'") == 1
    # Log entries that owe nothing go with the history; the one that owes stays.
    assert await pg.fetchval("SELECT array_agg(group_key) FROM monitor_nflog") == ["g"]
