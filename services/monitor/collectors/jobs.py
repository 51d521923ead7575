"""Job failure rate per type over a window, from the Postgres job archive."""

from __future__ import annotations

from services.monitor.clock import to_datetime
from services.monitor.collectors import Collected, Context
from services.monitor.samples import Sample

_FINISHED = """
SELECT type, count(*) FILTER (WHERE status = 'failed') AS failed, count(*) AS finished
FROM jobs
WHERE finished_at > $1 AND status IN ('succeeded', 'failed')
GROUP BY type
"""


REFRESH_SECONDS = 60.0


class JobsCollector:
    """Reads the archive at most once a minute: a rate over a 15-minute window barely
    moves in 15 seconds, and the archive is the largest table."""

    name = "jobs"
    produces = frozenset({"tgflow_jobs_finished", "tgflow_jobs_failed", "tgflow_job_failure_ratio"})

    def __init__(self) -> None:
        self._last: tuple[float, Collected] | None = None

    async def collect(self, ctx: Context) -> Collected:
        now = ctx.clock.now()
        if self._last is not None and 0 <= now - self._last[0] < REFRESH_SECONDS:
            return self._last[1]
        self._last = (now, await self._read(ctx))
        return self._last[1]

    async def _read(self, ctx: Context) -> Collected:
        window = ctx.settings.monitor_failure_window
        since = to_datetime(ctx.clock.now() - window)
        rows = await ctx.db.fetch(_FINISHED, since)
        out: list[Sample] = []
        for r in rows:
            labels = {"type": r["type"]}
            out.append(
                Sample("tgflow_jobs_finished", float(r["finished"]), labels, "Finished in window.")
            )
            out.append(
                Sample("tgflow_jobs_failed", float(r["failed"]), labels, "Failed in window.")
            )
            # A ratio over a handful of jobs is noise; below the minimum it is not reported.
            if r["finished"] >= ctx.settings.monitor_failure_min_jobs:
                ratio = r["failed"] / r["finished"]
                out.append(
                    Sample("tgflow_job_failure_ratio", ratio, labels, "Failed per finished.")
                )
        return Collected(
            out, {"window_seconds": window, "types": {r["type"]: dict(r) for r in rows}}
        )
