"""CPU, memory and disk of the host the monitor runs on (psutil)."""

from __future__ import annotations

import asyncio
import socket

import psutil  # type: ignore[import-untyped]

from services.monitor.collectors import Collected, Context
from services.monitor.samples import Sample


class SystemCollector:
    name = "system"
    produces = frozenset(
        {
            "tgflow_host_cpu_utilization",
            "tgflow_host_memory_utilization",
            "tgflow_host_memory_total_bytes",
            "tgflow_host_memory_available_bytes",
            "tgflow_host_disk_utilization",
            "tgflow_host_disk_total_bytes",
            "tgflow_host_disk_free_bytes",
            "tgflow_host_load1",
        }
    )

    def __init__(self, disk_paths: list[str]) -> None:
        self.disk_paths = disk_paths
        self.host = socket.gethostname()
        psutil.cpu_percent(None)  # the first reading is meaningless; start the interval now

    async def collect(self, ctx: Context) -> Collected:
        # statvfs on a network mount can block: keep it off the event loop.
        samples = await asyncio.to_thread(self._read)
        return Collected(samples, {"host": self.host})

    def _read(self) -> list[Sample]:
        host = {"host": self.host}
        memory = psutil.virtual_memory()
        out = [
            Sample(
                "tgflow_host_cpu_utilization", psutil.cpu_percent(None) / 100, host, "CPU busy."
            ),
            Sample("tgflow_host_memory_utilization", memory.percent / 100, host, "Memory in use."),
            Sample("tgflow_host_memory_total_bytes", float(memory.total), host, "Memory."),
            Sample("tgflow_host_memory_available_bytes", float(memory.available), host, "Free."),
            Sample("tgflow_host_load1", psutil.getloadavg()[0], host, "Load average, 1 minute."),
        ]
        for path in self.disk_paths:
            usage = psutil.disk_usage(path)
            labels = {**host, "path": path}
            out += [
                Sample("tgflow_host_disk_utilization", usage.percent / 100, labels, "Disk in use."),
                Sample("tgflow_host_disk_total_bytes", float(usage.total), labels, "Disk size."),
                Sample("tgflow_host_disk_free_bytes", float(usage.free), labels, "Disk free."),
            ]
        return out
