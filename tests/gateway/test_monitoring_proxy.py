"""/v1/monitoring through the gateway: auth, pass-through, and a missing monitor."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.monitor.app import build_app
from services.monitor.clock import ManualClock
from services.monitor.collectors import Context
from services.monitor.engine import Engine
from shared import db
from shared.config import MonitorSettings
from tests.helpers import auth, gateway_client
from tests.monitor.conftest import StaticCollector, make_engine, serving

OPS = auth(scopes=("monitoring:read", "monitoring:write"))

RULES = "rules: [{name: High, expr: 'load > 1', severity: critical}]"


@pytest.fixture
async def monitor() -> AsyncIterator[tuple[str, Engine, StaticCollector]]:
    """A real monitor API over HTTP, bound to loopback but configured as if it were
    reachable from elsewhere, so it demands the gateway's key."""
    settings = MonitorSettings(monitor_host="0.0.0.0")
    pool = await db.create_pool(settings, role="monitor-test")
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    http = httpx.AsyncClient()
    ctx = Context(settings, redis, pool, http, ManualClock())
    src = StaticCollector("src", {"load"})
    engine = make_engine(ctx, RULES, None, [src])
    await engine.start()
    try:
        async with serving(build_app(engine, settings)) as url:
            yield url, engine, src
    finally:
        await http.aclose()
        await redis.aclose()
        await pool.close()


async def test_reads_and_changes_pass_through_with_the_right_scopes(
    monitor: tuple[str, Engine, StaticCollector],
) -> None:
    url, engine, src = monitor
    src.set("load", 5, svc="a")
    await engine.cycle()
    async with gateway_client(monitor_url=url) as client:
        r = await client.get("/v1/monitoring/alerts/active", headers=OPS)
        assert r.status_code == 200
        (alert,) = r.json()["alerts"]
        assert (alert["rule"], alert["state"]) == ("High", "firing")
        r = await client.get("/v1/monitoring/alerts/history", params={"limit": 0}, headers=OPS)
        assert r.status_code == 422
        assert r.json()["error"]["details"][0]["field"] == "limit"
        r = await client.get("/v1/monitoring/alerts/active")
        assert r.status_code == 401
        r = await client.get("/v1/monitoring/alerts/active", headers=auth())
        assert r.status_code == 403  # job scopes are not monitoring scopes
        read_only = auth(scopes=("monitoring:read",))
        ack = f"/v1/monitoring/alerts/{alert['id']}/acknowledge"
        r = await client.post(ack, json={"by": "ops"}, headers=read_only)
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "insufficient_scope"
        r = await client.post(ack, json={"by": "ops"}, headers=OPS)
        assert r.status_code == 200
        assert r.json()["acknowledged_by"] == "ops"
        r = await client.post("/v1/monitoring/silences", content=b"{", headers=OPS)
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "invalid_json"
        r = await client.post(
            "/v1/monitoring/silences",
            json={"matchers": ['svc="a"'], "duration": "1h"},
            headers=OPS,
        )
        assert r.status_code == 201
        silence_id = r.json()["id"]
        r = await client.delete(f"/v1/monitoring/silences/{silence_id}", headers=OPS)
        assert (r.status_code, r.json()["state"]) == (200, "expired")
        r = await client.delete("/v1/monitoring/silences/nope", headers=OPS)
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "silence_not_found"
        r = await client.get("/v1/monitoring/dashboard/overview", headers=OPS)
        assert r.json()["alerts"]["by_severity"]["critical"] == 1
        schema = (await client.get("/openapi.json")).json()
        assert "/v1/monitoring/alerts/{alert_id}/silence" in schema["paths"]
        assert "/v1/monitoring/dashboard/overview" in schema["paths"]
    # Straight to the monitor, without the gateway's key: refused.
    async with httpx.AsyncClient(base_url=url) as direct:
        r = await direct.get("/v1/monitoring/alerts/active")
        assert r.status_code == 401
        assert (await direct.get("/healthz")).status_code == 200


async def test_an_unreachable_monitor_is_a_503_with_retry_after() -> None:
    async with gateway_client(monitor_url="http://127.0.0.1:1") as client:
        r = await client.get("/v1/monitoring/redis/status", headers=OPS)
        assert r.status_code == 503
        assert r.headers["Retry-After"] == "5"
        assert r.json()["error"]["code"] == "monitor_unavailable"


async def test_a_hanging_monitor_is_a_503_not_a_hang() -> None:
    async def slow(_: Request) -> Response:
        await asyncio.sleep(1.5)
        return JSONResponse({})

    async def broken(_: Request) -> Response:
        return JSONResponse({"error": {"code": "internal_error", "message": "x"}}, status_code=500)

    app = Starlette(
        routes=[Route("/v1/monitoring/rules", slow), Route("/v1/monitoring/system/health", broken)]
    )
    async with serving(app) as url, gateway_client(monitor_url=url, monitor_timeout=0.3) as client:
        started = time.monotonic()
        r = await client.get("/v1/monitoring/rules", headers=OPS)
        assert time.monotonic() - started < 2
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "monitor_unavailable"
        r = await client.get("/v1/monitoring/system/health", headers=OPS)
        assert r.status_code == 502
        assert r.json()["error"]["code"] == "monitor_error"
