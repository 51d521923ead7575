"""Size of the dead-letter list: jobs that exhausted their tries.

The list (``tgflow:deadletters``; a list, sorted set or stream) arrives with job
dead-lettering. A missing key reads as "source not present", so the producer should
keep the key once created (a stream, for instance, survives being emptied).
"""

from __future__ import annotations

from services.monitor.collectors import Collected, Context, SourceAbsent
from services.monitor.samples import Sample

DEAD_LETTER_KEY = "tgflow:deadletters"


class DeadLettersCollector:
    name = "deadletters"
    produces = frozenset({"tgflow_dead_letters"})

    async def collect(self, ctx: Context) -> Collected:
        kind = await ctx.redis.type(DEAD_LETTER_KEY)
        if kind == "list":
            size = await ctx.redis.llen(DEAD_LETTER_KEY)  # type: ignore[misc]
        elif kind == "zset":
            size = await ctx.redis.zcard(DEAD_LETTER_KEY)
        elif kind == "stream":
            size = await ctx.redis.xlen(DEAD_LETTER_KEY)
        elif kind == "none":
            raise SourceAbsent(f"no dead-letter list at {DEAD_LETTER_KEY}")
        else:
            raise TypeError(f"{DEAD_LETTER_KEY} is a {kind}, not a list, sorted set or stream")
        sample = Sample("tgflow_dead_letters", float(size), {}, "Jobs in the dead-letter list.")
        return Collected([sample], {"size": size})
