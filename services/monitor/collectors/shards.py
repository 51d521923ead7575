"""Telegram shards without an owner: leases missing for shards workers announce.

Workers serving the Telegram queue announce the shard count as ``shards`` in their
registry entry and hold ``shard_lease_key(n)`` while they own shard ``n``. While no
worker announces a count, the source is reported absent rather than as zero gaps.
"""

from __future__ import annotations

from services.monitor.collectors import Collected, Context, SourceAbsent
from services.monitor.samples import Sample
from shared import registry
from shared.jobs.routing import shard_lease_key


class ShardsCollector:
    name = "shards"
    produces = frozenset({"tgflow_shards_total", "tgflow_shards_unowned"})

    async def collect(self, ctx: Context) -> Collected:
        live = await registry.live_instances(ctx.redis, "worker")
        counts = [int(w["shards"]) for w in live if w.get("shards", "").isdigit()]
        if not counts:
            raise SourceAbsent("no worker announces a shard count (Telegram shard leases)")
        total = max(counts)
        owners = await ctx.redis.mget([shard_lease_key(i) for i in range(total)]) if total else []
        unowned = [i for i, owner in enumerate(owners) if owner is None]
        return Collected(
            [
                Sample("tgflow_shards_total", float(total), {}, "Telegram shards."),
                Sample("tgflow_shards_unowned", float(len(unowned)), {}, "Shards without a lease."),
            ],
            {"total": total, "unowned": unowned[:100]},
        )
