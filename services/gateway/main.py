"""Run the gateway under uvicorn."""

from __future__ import annotations

import socket

import uvicorn
from fastapi import FastAPI

from services.gateway.app import create_app, end_streams
from shared.config import GatewaySettings
from shared.heap import freeze_startup_heap
from shared.logs import setup_logging
from shared.registry import new_instance_id
from shared.telemetry import setup_sentry, setup_tracing


class GatewayServer(uvicorn.Server):
    """uvicorn, ending the app's event streams as it begins to shut down."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        end_streams(self.app)
        await super().shutdown(sockets)


def run(settings: GatewaySettings) -> None:
    settings.ensure_safe()
    setup_logging(settings.log_level, json=settings.log_json, service="gateway")
    setup_sentry(settings, "gateway")
    provider = setup_tracing(settings, "gateway", settings.instance_name or new_instance_id("gw"))
    app = create_app(settings)
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
    freeze_startup_heap()
    try:
        GatewayServer(config, app).run()
    finally:
        provider.shutdown()
