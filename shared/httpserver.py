"""Small HTTP servers embedded in a process's own event loop (worker and monitor)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Generator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared import metrics


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the process that embeds it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def health_and_metrics_app(healthy: Callable[[], bool]) -> Starlette:
    async def healthz(_: Request) -> Response:
        ok = healthy()
        return JSONResponse({"status": "ok" if ok else "stopping"}, status_code=200 if ok else 503)

    async def prometheus(_: Request) -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return Starlette(routes=[Route("/healthz", healthz), Route("/metrics", prometheus)])


def make_server(app: Starlette, host: str, port: int) -> uvicorn.Server:
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False)
    return _QuietServer(config)


def bound_port(server: uvicorn.Server) -> int:
    """The port actually bound (the configured one may be 0)."""
    port: int = server.servers[0].sockets[0].getsockname()[1]
    return port


async def wait_started(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    """Return once the server listens; raise if it failed to start."""
    while not server.started:  # uvicorn exposes no event for this
        if task.done():
            task.result()
            raise RuntimeError("HTTP server exited during start-up")
        await asyncio.sleep(0.01)
