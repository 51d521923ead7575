"""Run the gateway under uvicorn."""

from __future__ import annotations

import uvicorn
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

from services.gateway.app import create_app
from shared.config import GatewaySettings
from shared.logs import setup_logging
from shared.registry import new_instance_id
from shared.telemetry import setup_sentry, setup_tracing


def run(settings: GatewaySettings) -> None:
    settings.ensure_safe()
    setup_logging(settings.log_level, json=settings.log_json, service="gateway")
    setup_sentry(settings, "gateway")
    provider = setup_tracing(settings, "gateway", settings.instance_name or new_instance_id("gw"))
    app = create_app(settings)
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=provider, exclude_spans=["send", "receive"]
    )
    config = uvicorn.Config(
        app,
        host=settings.gateway_host,
        port=settings.gateway_port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    try:
        uvicorn.Server(config).run()
    finally:
        provider.shutdown()
