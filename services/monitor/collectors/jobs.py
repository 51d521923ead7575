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


class JobsCollector:
    name = "jobs"
    produces = frozenset({"tgflow_jobs_finished", "tgflow_jobs_failed", "tgflow_job_failure_ratio"})

    async def collect(self, ctx: Context) -> Collected:
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
