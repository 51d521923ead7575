"""The monitor process: samples queues, Redis and workers; serves /metrics."""

from __future__ import annotations

import asyncio
import signal

from prometheus_client import REGISTRY

from services.monitor.app import build_app
from services.monitor.sampler import Sampler
from shared import registry
from shared.config import MonitorSettings
from shared.httpserver import make_server
from shared.logs import get_logger, setup_logging
from shared.redis_client import create_redis
from shared.telemetry import setup_sentry

log = get_logger(__name__)


async def serve(settings: MonitorSettings, stop: asyncio.Event) -> None:
    instance_id = settings.instance_name or registry.new_instance_id("monitor")
    redis = create_redis(settings)
    sampler = Sampler(redis, settings.monitor_interval)
    REGISTRY.register(sampler)
    server = make_server(build_app(sampler), settings.monitor_host, settings.monitor_port)
    url = f"http://{settings.monitor_host}:{settings.monitor_port}"
    tasks = [
        asyncio.create_task(sampler.run()),
        asyncio.create_task(
            registry.heartbeat_forever(
                redis,
                instance_id,
                lambda: {"id": instance_id, "kind": "monitor", "metrics_url": url + "/metrics"},
                interval=5.0,
                stop=stop,
            )
        ),
    ]
    server_task = asyncio.create_task(server.serve())
    log.info("monitor started", instance=instance_id, url=url)
    await stop.wait()
    server.should_exit = True
    await server_task
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await registry.withdraw(redis, instance_id)
    REGISTRY.unregister(sampler)
    await redis.aclose()
    log.info("monitor stopped", instance=instance_id)


def run(settings: MonitorSettings) -> None:
    settings.ensure_safe()
    setup_logging(settings.log_level, json=settings.log_json, service="monitor")
    setup_sentry(settings, "monitor")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    import uvloop

    uvloop.run(main())
