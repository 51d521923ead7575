"""Completion webhooks: deliveries waiting in Redis, and deliveries given up on.

Waiting deliveries are the members of ``tgflow:webhooks:due``; a delivery that exhausted
its attempts is a ``failed`` row in ``webhook_deliveries`` (written by the worker that
gave up). The failed count only grows, so rules look at its change over a window.
"""

from __future__ import annotations

from services.monitor.collectors import Collected, Context
from services.monitor.samples import Sample
from shared.delivery.lua import WEBHOOK_DUE


class WebhooksCollector:
    name = "webhooks"
    produces = frozenset({"tgflow_webhooks_pending", "tgflow_webhook_deliveries_failed"})

    async def collect(self, ctx: Context) -> Collected:
        pending = int(await ctx.redis.zcard(WEBHOOK_DUE))
        failed = int(
            await ctx.db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status = 'failed'")
        )
        samples = [
            Sample("tgflow_webhooks_pending", float(pending), {}, "Webhook deliveries waiting."),
            Sample(
                "tgflow_webhook_deliveries_failed",
                float(failed),
                {},
                "Webhook deliveries given up after their last attempt.",
            ),
        ]
        return Collected(samples, {"pending": pending, "failed": failed})
