"""The monitor's HTTP app: /healthz, /metrics and the API under /v1/monitoring."""

from __future__ import annotations

import hmac
import ipaddress

import asyncpg
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from services.monitor import api, views
from services.monitor.engine import Engine
from services.monitor.http import ApiError, error_response, json_response
from shared import metrics
from shared.config import MonitorSettings
from shared.logs import get_logger
from shared.text import RefuseControlCharacters

log = get_logger(__name__)
KEY_HEADER = "x-tgflow-monitor-key"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RequireKey:
    """Beyond loopback, the API answers only callers holding the gateway's key."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = dict(scope["headers"]).get(KEY_HEADER.encode(), b"")
            if not hmac.compare_digest(given, self.key):
                err = ApiError(401, "unauthenticated", "This API is served through the gateway.")
                await error_response(err)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app(engine: Engine, settings: MonitorSettings) -> Starlette:
    async def healthz(_: Request) -> Response:
        last = engine.last_cycle_at
        stale = last is None or engine.clock.now() - last > engine.interval * 3
        body = {"status": "stale" if stale else "ok", "collector_errors": engine.sampler.errors}
        return json_response(body, 503 if stale and engine.cycles else 200)

    async def prometheus(_: Request) -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    async def api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(ApiError(exc.status_code, code, str(exc.detail)))

    async def storage_down(_: Request, exc: Exception) -> Response:
        log.warning("monitor storage unavailable", error=repr(exc))
        err = ApiError(503, "monitor_storage_unavailable", "The monitor's database is unreachable.")
        response = error_response(err)
        response.headers["Retry-After"] = "5"
        return response

    async def unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error in the monitor API", error=type(exc).__name__)
        return error_response(ApiError(500, "internal_error", "An unexpected error occurred."))

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/metrics", prometheus),
            *api.routes(engine),
            *views.routes(engine),
        ],
        exception_handlers={
            ApiError: api_error,
            HTTPException: http_error,
            asyncpg.PostgresError: storage_down,
            asyncpg.InterfaceError: storage_down,
            OSError: storage_down,
            Exception: unexpected,
        },
    )
    app.add_middleware(RefuseControlCharacters)
    if not is_loopback(settings.monitor_host):
        app.add_middleware(RequireKey, key=settings.monitor_api_key())
    return app
