"""Queue depth and how long the oldest due job has waited, per ARQ queue."""

from __future__ import annotations

from services.monitor.collectors import Collected, Context
from services.monitor.samples import Sample
from shared.jobs import QueueKind, queue_key


class QueuesCollector:
    name = "queues"
    produces = frozenset({"tgflow_queue_depth", "tgflow_queue_oldest_age_seconds"})

    async def collect(self, ctx: Context) -> Collected:
        now_ms = ctx.clock.now() * 1000
        async with ctx.redis.pipeline(transaction=False) as pipe:
            for kind in QueueKind:
                pipe.zcard(queue_key(kind))
                pipe.zrange(queue_key(kind), 0, 0, withscores=True)
            replies = await pipe.execute()
        out: list[Sample] = []
        details = {}
        for i, kind in enumerate(QueueKind):
            depth, oldest = replies[2 * i], replies[2 * i + 1]
            # Scores are due times: a deferred job is not late, so its age is zero.
            age = max(0.0, (now_ms - oldest[0][1]) / 1000) if oldest else 0.0
            labels = {"queue": kind.value}
            out.append(Sample("tgflow_queue_depth", float(depth), labels, "Jobs in the queue."))
            out.append(
                Sample(
                    "tgflow_queue_oldest_age_seconds", age, labels, "Wait of the oldest due job."
                )
            )
            details[kind.value] = {"depth": depth, "oldest_age_seconds": age}
        return Collected(out, details)
