"""The monitor's own count of firing alerts, so a rule can watch for alert storms."""

from __future__ import annotations

from collections.abc import Callable

from services.monitor.collectors import Collected, Context
from services.monitor.samples import Sample


class AlertsCollector:
    name = "alerts"
    produces = frozenset({"tgflow_alerts_firing"})

    def __init__(self, firing: Callable[[], int]) -> None:
        self.firing = firing

    async def collect(self, ctx: Context) -> Collected:
        count = float(self.firing())
        return Collected([Sample("tgflow_alerts_firing", count, {}, "Alerts firing now.")])
