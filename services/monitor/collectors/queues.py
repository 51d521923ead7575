"""Queue depth and how long the oldest due job has waited, per kind of queue.

The Telegram kind sums its shard queues. Scores are due times (a high-priority job's is
shifted into a lower band, see ``shared.jobs.routing``), so a deferred job is not late.
"""

from __future__ import annotations

from services.monitor.collectors import Collected, Context
from services.monitor.samples import Sample
from shared.jobs import QueueKind
from shared.jobs.routing import BAND_EDGE_MS, all_queues, due_ms_of


class QueuesCollector:
    name = "queues"
    produces = frozenset({"tgflow_queue_depth", "tgflow_queue_oldest_age_seconds"})

    async def collect(self, ctx: Context) -> Collected:
        now_ms = ctx.clock.now() * 1000
        shards = ctx.settings.telegram_shards
        async with ctx.redis.pipeline(transaction=False) as pipe:
            for kind in QueueKind:
                for key in all_queues(kind, shards):
                    pipe.zcard(key)
                    pipe.zrange(key, 0, 0, withscores=True)  # oldest high-priority job
                    pipe.zrangebyscore(key, BAND_EDGE_MS, "+inf", start=0, num=1, withscores=True)
            replies = iter(await pipe.execute())
        out: list[Sample] = []
        details = {}
        for kind in QueueKind:
            depth, due = 0, []
            for _key in all_queues(kind, shards):
                depth += next(replies)
                due += [due_ms_of(score) for _, score in [*next(replies), *next(replies)]]
            age = max(0.0, (now_ms - min(due)) / 1000) if due else 0.0
            labels = {"queue": kind.value}
            out.append(Sample("tgflow_queue_depth", float(depth), labels, "Jobs in the queue."))
            out.append(
                Sample(
                    "tgflow_queue_oldest_age_seconds", age, labels, "Wait of the oldest due job."
                )
            )
            details[kind.value] = {"depth": depth, "oldest_age_seconds": age}
        return Collected(out, details)
