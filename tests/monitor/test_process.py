"""The monitor as a process: serve() opens everything, cycles, answers, and stops."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
from redis.asyncio import Redis

from services.monitor.main import serve
from shared import registry
from shared.config import MonitorSettings
from tests.helpers import eventually


async def test_serve_discovers_itself_evaluates_rules_and_stops_cleanly(redis: Redis) -> None:
    settings = MonitorSettings(monitor_port=0, monitor_interval=0.3)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    try:

        async def announced() -> list[dict[str, str]]:
            return await registry.live_instances(redis, "monitor")

        (me,) = await eventually(announced)
        base = me["url"]
        async with httpx.AsyncClient(base_url=base) as client:

            async def scraped_itself() -> dict[str, Any] | None:
                body: dict[str, Any] = (await client.get("/v1/monitoring/pool/status")).json()
                mine = [p for p in body["processes"] if p["instance"] == me["id"]]
                return body if mine else None

            pool = await eventually(scraped_itself)
            (process,) = [p for p in pool["processes"] if p["instance"] == me["id"]]
            assert process["role"] == "monitor"
            assert process["max"] == settings.db_pool_max
            rules = (await client.get("/v1/monitoring/rules")).json()["rules"]
            health = {r["name"]: r["last_evaluation"]["health"] for r in rules}
            assert health["NoLiveWorker"] == "ok"  # evaluated, and no worker: it is pending
            assert health["AccountDisabled"] == "ok"  # accounts exist; none is disabled
            assert health["ShardsUnowned"] == "nodata"  # no worker announces shards yet
            active = (await client.get("/v1/monitoring/alerts/active")).json()["alerts"]
            assert ("NoLiveWorker", "pending") in {(a["rule"], a["state"]) for a in active}
            metrics = (await client.get("/metrics")).text
            assert "tgflow_queue_depth" in metrics
            assert 'tgflow_monitor_collector_up{collector="postgres"} 1.0' in metrics
            assert "tgflow_monitor_rule_evaluation_seconds_count" in metrics

            async def alerts_gauge_agrees() -> bool:
                # Other critical rules may be pending on a loaded host (RedisDown after a slow
                # scrape, say): the gauge must count what the API lists, NoLiveWorker among them.
                text = (await client.get("/metrics")).text
                listed = (await client.get("/v1/monitoring/alerts/active")).json()["alerts"]
                pending = [
                    a for a in listed if (a["state"], a["severity"]) == ("pending", "critical")
                ]
                gauge = re.search(
                    r'^tgflow_alerts\{severity="critical",state="pending"\} (\S+)$', text, re.M
                )
                assert gauge is not None
                return float(gauge[1]) == len(pending) >= 1

            await eventually(alerts_gauge_agrees)
            assert (await client.get("/healthz")).status_code == 200
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    assert await registry.live_instances(redis, "monitor") == []
