"""Scrape every announced process's /metrics, so scaled-out services need no config.

Scraped series keep their labels plus ``instance`` and ``kind``. From them come
derived series the rules use: pool utilisation and free connections per process,
the gateway's 5xx and slow-request counts, and Telegram reconnects per process.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from typing import Any

import httpx
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from services.monitor.collectors import Collected, Context
from services.monitor.samples import Sample
from shared import registry

SLOW_REQUEST_SECONDS = 5.0
DERIVED = frozenset(
    {
        "tgflow_db_pool_utilization",
        "tgflow_db_pool_free",
        "tgflow_http_5xx_total",
        "tgflow_http_slow_requests_total",
        "tgflow_telegram_instance_reconnects_total",
        "tgflow_monitor_scrape_up",
        "tgflow_monitor_scrape_duration_seconds",
    }
)


class ScrapeCollector:
    name = "scrape"
    produces = DERIVED

    def __init__(self, skip: Iterable[str] = ()) -> None:
        # Names other collectors emit (and the monitor re-exports): never take them twice.
        self.skip = frozenset(skip) | DERIVED

    async def collect(self, ctx: Context) -> Collected:
        instances = [i for i in await registry.live_instances(ctx.redis) if i.get("metrics_url")]
        results = await asyncio.gather(*(self._scrape(ctx, i) for i in instances))
        out: list[Sample] = []
        targets: list[dict[str, Any]] = []
        for instance, (samples, target) in zip(instances, results, strict=True):
            out.extend(samples)
            targets.append({"id": instance.get("id"), "kind": instance.get("kind"), **target})
        return Collected(out, {"targets": targets})

    async def _scrape(
        self, ctx: Context, instance: dict[str, str]
    ) -> tuple[list[Sample], dict[str, Any]]:
        base = {"instance": instance.get("id", "?"), "kind": instance.get("kind", "?")}
        url = instance["metrics_url"]
        start = asyncio.get_running_loop().time()
        try:
            response = await ctx.http.get(url, timeout=ctx.settings.monitor_scrape_timeout)
            response.raise_for_status()
            families = list(text_string_to_metric_families(response.text))
        except (httpx.HTTPError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            up = Sample("tgflow_monitor_scrape_up", 0.0, base, "Whether the last scrape worked.")
            return [up], {"url": url, "up": False, "error": error}
        took = asyncio.get_running_loop().time() - start
        samples = self._convert(families, base)
        samples += derive(families, base)
        samples += [
            Sample("tgflow_monitor_scrape_up", 1.0, base, "Whether the last scrape worked."),
            Sample("tgflow_monitor_scrape_duration_seconds", took, base, "Scrape time."),
        ]
        return samples, {"url": url, "up": True, "series": len(samples)}

    def _convert(self, families: list[Metric], base: dict[str, str]) -> list[Sample]:
        out = []
        for family in families:
            for s in family.samples:
                if s.name in self.skip or s.name.endswith("_created") or math.isnan(s.value):
                    continue
                out.append(Sample(s.name, float(s.value), {**s.labels, **base}))
        return out


def derive(families: list[Metric], base: dict[str, str]) -> list[Sample]:
    """Pool utilisation and free connections per role; gateway 5xx and slow requests;
    Telegram reconnects summed over accounts."""
    values: dict[str, dict[str, float]] = {}
    out: list[Sample] = []
    by_name = {f.name: f for f in families}
    for name in ("tgflow_db_pool_in_use", "tgflow_db_pool_max"):
        for s in by_name[name].samples if name in by_name else []:
            values.setdefault(s.labels.get("role", ""), {})[name] = s.value
    for role, v in values.items():
        if (
            "tgflow_db_pool_max" in v
            and "tgflow_db_pool_in_use" in v
            and v["tgflow_db_pool_max"] > 0
        ):
            labels = {**base, "role": role}
            used, limit = v["tgflow_db_pool_in_use"], v["tgflow_db_pool_max"]
            out.append(
                Sample("tgflow_db_pool_utilization", used / limit, labels, "In use per max.")
            )
            out.append(
                Sample("tgflow_db_pool_free", limit - used, labels, "Connections still free.")
            )
    requests = by_name.get("tgflow_http_requests")
    if requests is not None:
        errors = sum(
            s.value
            for s in requests.samples
            if s.name.endswith("_total") and s.labels.get("status", "").startswith("5")
        )
        out.append(Sample("tgflow_http_5xx_total", errors, base, "Responses with a 5xx status."))
    reconnects = by_name.get("tgflow_telegram_reconnects")
    if reconnects is not None:  # declared but never incremented is a true zero
        total = sum(s.value for s in reconnects.samples if s.name.endswith("_total"))
        out.append(
            Sample(
                "tgflow_telegram_instance_reconnects_total",
                total,
                base,
                "Reconnects, all accounts.",
            )
        )
    latency = by_name.get("tgflow_http_request_duration_seconds")
    if latency is not None:
        out.append(Sample("tgflow_http_slow_requests_total", _slower_than(latency), base, "Slow."))
    return out


def _slower_than(histogram: Metric) -> float:
    """Requests above the smallest bucket bound >= SLOW_REQUEST_SECONDS, over all routes."""
    buckets: dict[tuple[tuple[str, str], ...], dict[float, float]] = {}
    for s in histogram.samples:
        if s.name.endswith("_bucket"):
            key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            buckets.setdefault(key, {})[float(s.labels["le"])] = s.value
    total = 0.0
    for bounds in buckets.values():
        over = [b for b in bounds if b >= SLOW_REQUEST_SECONDS]
        if over:
            total += bounds[math.inf] - bounds[min(over)] if math.inf in bounds else 0.0
    return total
