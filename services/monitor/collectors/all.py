"""The collectors the monitor runs, in one list."""

from __future__ import annotations

from collections.abc import Callable

from services.monitor.collectors import Collector
from services.monitor.collectors.accounts import AccountsCollector
from services.monitor.collectors.alerts import AlertsCollector
from services.monitor.collectors.deadletters import DeadLettersCollector
from services.monitor.collectors.jobs import JobsCollector
from services.monitor.collectors.postgres import PostgresCollector
from services.monitor.collectors.queues import QueuesCollector
from services.monitor.collectors.redis import RedisCollector
from services.monitor.collectors.scrape import ScrapeCollector
from services.monitor.collectors.shards import ShardsCollector
from services.monitor.collectors.system import SystemCollector
from services.monitor.collectors.webhooks import WebhooksCollector
from services.monitor.collectors.workers import WorkersCollector
from shared.config import MonitorSettings


def default_collectors(settings: MonitorSettings, firing: Callable[[], int]) -> list[Collector]:
    disks = [p.strip() for p in settings.monitor_disk_paths.split(",") if p.strip()]
    own: list[Collector] = [
        PostgresCollector(),
        RedisCollector(),
        SystemCollector(disks),
        QueuesCollector(),
        WorkersCollector(),
        ShardsCollector(),
        DeadLettersCollector(),
        WebhooksCollector(),
        JobsCollector(),
        AccountsCollector(),
        AlertsCollector(firing),
    ]
    skip = {name for c in own for name in c.produces}
    return [*own, ScrapeCollector(skip)]
