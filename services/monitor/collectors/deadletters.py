"""Size of the dead-letter list: jobs that failed for good and were not requeued.

Workers keep ``tgflow:deadletters`` as a sorted set (member: job id, score: epoch ms) with
a placeholder member at score 0, so the key outlives its last entry; only members with a
positive score are counted. A list or a stream is counted whole. A missing key reads as
"source not present": no worker has dead-lettered a job yet.
"""

from __future__ import annotations

from services.monitor.collectors import Collected, Context, SourceAbsent
from services.monitor.samples import Sample
from shared.queue import DEAD_LETTERS

DEAD_LETTER_KEY = DEAD_LETTERS


class DeadLettersCollector:
    name = "deadletters"
    produces = frozenset({"tgflow_dead_letters"})

    async def collect(self, ctx: Context) -> Collected:
        kind = await ctx.redis.type(DEAD_LETTER_KEY)
        if kind == "list":
            size = await ctx.redis.llen(DEAD_LETTER_KEY)  # type: ignore[misc]
        elif kind == "zset":
            size = await ctx.redis.zcount(DEAD_LETTER_KEY, "(0", "+inf")
        elif kind == "stream":
            size = await ctx.redis.xlen(DEAD_LETTER_KEY)
        elif kind == "none":
            raise SourceAbsent(f"no dead-letter list at {DEAD_LETTER_KEY}")
        else:
            raise TypeError(f"{DEAD_LETTER_KEY} is a {kind}, not a list, sorted set or stream")
        sample = Sample("tgflow_dead_letters", float(size), {}, "Jobs in the dead-letter list.")
        return Collected([sample], {"size": size})
