"""Liveness, readiness and metrics: the only routes without a token."""

import asyncio
from typing import Any

from fastapi import APIRouter, Response

from services.gateway.deps import State
from shared import metrics, registry

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _check(name: str, probe: Any) -> tuple[str, dict[str, Any]]:
    try:
        async with asyncio.timeout(1.0):
            detail = await probe
    except Exception as exc:
        return name, {"ok": False, "error": type(exc).__name__}
    return name, {"ok": True, **(detail or {})}


async def _workers(state: State) -> dict[str, Any]:
    live = await registry.live_instances(state.redis, "worker")
    if not live:
        raise LookupError("no live worker")
    return {"count": len(live)}


async def _redis(state: State) -> None:
    await state.redis.ping()


async def _postgres(state: State) -> None:
    await state.db.fetchval("SELECT 1")


@router.get("/readyz", summary="Redis, Postgres and at least one worker are reachable")
async def readyz(state: State, response: Response) -> dict[str, Any]:
    results = dict(
        await asyncio.gather(
            _check("redis", _redis(state)),
            _check("postgres", _postgres(state)),
            _check("workers", _workers(state)),
        )
    )
    ready = all(r["ok"] for r in results.values())
    if not ready:
        response.status_code = 503
        response.headers["Retry-After"] = "1"
    return {"status": "ready" if ready else "not_ready", "checks": results}


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def prometheus_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
