"""The monitor's HTTP API: health, metrics and the latest samples."""

from __future__ import annotations

import time
from dataclasses import asdict

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.monitor.sampler import Sampler
from shared import metrics


def build_app(sampler: Sampler) -> Starlette:
    async def healthz(_: Request) -> Response:
        stale = time.time() - sampler.last_run > sampler.interval * 3
        body = {"status": "stale" if stale else "ok", "collector_errors": sampler.errors}
        return JSONResponse(body, status_code=503 if stale else 200)

    async def prometheus(_: Request) -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    async def samples(_: Request) -> Response:
        return JSONResponse(
            {
                "sampled_at": sampler.last_run,
                "samples": {k: [asdict(s) for s in v] for k, v in sampler.samples.items()},
                "errors": sampler.errors,
            }
        )

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/metrics", prometheus),
            Route("/v1/samples", samples),
        ]
    )
