"""Live workers from the registry, and how long ago each last beat."""

from __future__ import annotations

from services.monitor.collectors import Collected, Context
from services.monitor.samples import Sample
from shared import registry


class WorkersCollector:
    name = "workers"
    produces = frozenset({"tgflow_workers_live", "tgflow_worker_heartbeat_age_seconds"})

    async def collect(self, ctx: Context) -> Collected:
        now = ctx.clock.now()
        live = await registry.live_instances(ctx.redis, "worker")
        out = [
            Sample("tgflow_workers_live", float(len(live)), {}, "Workers with a fresh heartbeat.")
        ]
        workers = []
        for w in live:
            age = max(0.0, now - float(w.get("heartbeat_at", now)))
            worker_id = w.get("id", "?")
            out.append(
                Sample(
                    "tgflow_worker_heartbeat_age_seconds",
                    age,
                    {"worker": worker_id},
                    "Seconds since the worker's last heartbeat.",
                )
            )
            workers.append(
                {"id": worker_id, "heartbeat_age_seconds": age, "queues": w.get("queues")}
            )
        return Collected(out, {"workers": workers})
