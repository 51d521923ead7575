"""An ARQ worker with the guarantees tgflow adds: wake-on-enqueue, job leases, drain.

ARQ polls its queue every ``poll_delay`` and marks a running job with an in-progress
key that lives for the longest timeout plus 10 s, so a crashed worker's job waits that
long. Here the key is a short lease renewed while the job runs (a dead worker's jobs
run again within one lease), and a Redis pub/sub nudge sent next to every enqueue wakes
idle consumers at once, with polling kept as the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from arq import Worker
from arq.constants import in_progress_key_prefix
from arq.worker import Function

from services.worker import metrics
from services.worker.state import WorkerState
from shared import serialization
from shared.aio import raise_if_cancelling, sleep_unless
from shared.jobs import QueueKind, queue_key
from shared.jobs.envelope import to_micros, utcnow
from shared.jobs.record import JobErrorInfo
from shared.logs import get_logger

log = get_logger(__name__)


class Consumer(Worker):
    """Consumes one queue for one worker process."""

    def __init__(
        self,
        state: WorkerState,
        kind: QueueKind,
        functions: list[Function],
        *,
        concurrency: int,
        burst: bool = False,
    ) -> None:
        settings = state.settings
        super().__init__(
            functions=functions,
            queue_name=queue_key(kind),
            redis_pool=state.arq,
            burst=burst,
            handle_signals=False,
            max_jobs=concurrency,
            poll_delay=settings.worker_poll_delay,
            keep_result=0,
            max_tries=1_000_000,  # tries are counted by the job runner, per job type
            allow_abort_jobs=True,
            ctx={"state": state},
            log_results=False,
            job_serializer=serialization.dumps,  # never ARQ's pickle default
            job_deserializer=serialization.loads,
        )
        self.ctx["consumer"] = self
        self.kind = kind
        self.state = state
        self.lease_s = settings.job_lease_seconds
        self.in_progress_timeout_s = self.lease_s
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """ARQ's start, minus ids this worker already runs.

        A running job stays in the queue's sorted set until it finishes, so every poll
        reads it again, and ARQ spends a WATCH/EXISTS/ZSCORE round trip on each one only
        to find it taken. Skipping our own running jobs removes that per-poll cost.
        """
        fresh = [j for j in job_ids if j.decode() not in self.tasks]
        if fresh:
            await super().start_jobs(fresh)

    def wake(self) -> None:
        self._wake.set()

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self._wake.set()  # a free slot: look at the queue again now

    async def main(self) -> None:
        """ARQ's loop, but sleeping on the nudge event instead of a fixed delay."""
        self.ctx["redis"] = self.pool
        renewer = asyncio.create_task(self._renew_leases())
        try:
            while not self._stopping.is_set():
                await self._poll_iteration()
                metrics.JOBS_RUNNING.labels(self.kind.value).set(len(self.tasks))
                if self.burst and await self._burst_done():
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_delay_s)
                self._wake.clear()
        finally:
            self._stopping.set()
            await renewer

    async def _burst_done(self) -> bool:
        if self.tasks:
            return False
        return int(await self.pool.zcard(self.queue_name)) == 0

    async def _renew_leases(self) -> None:
        """Extend the in-progress key of every running job well before it lapses."""
        while not await sleep_unless(self._stopping, self.lease_s / 3):
            if not self.tasks:
                continue
            try:
                async with self.pool.pipeline(transaction=False) as pipe:
                    for job_id in list(self.tasks):
                        pipe.pexpire(in_progress_key_prefix + job_id, int(self.lease_s * 1000))
                    await pipe.execute()
            except Exception as exc:  # keep renewing through Redis blips
                raise_if_cancelling()
                log.warning("lease renewal failed", queue=self.kind.value, error=str(exc))

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        """ARQ gave up on a job without running it (expired, aborted before start)."""
        await super().finish_failed_job(job_id, result_data)
        record = await self.state.jobs.get(job_id)
        if record is None or record.status.is_terminal:
            return
        if record.cancel_requested:
            status, error = "cancelled", JobErrorInfo(code="cancelled", message="Cancelled.")
        else:
            error = JobErrorInfo(code="not_runnable", message="The queue could not run the job.")
            status = "failed"
        changed, _ = await self.state.jobs.transition(
            job_id,
            {
                "status": status,
                "error": error.model_dump_json(),
                "finished_at": str(to_micros(utcnow())),
            },
            allowed_from=("queued", "running"),
            final=True,
        )
        if changed and status == "failed":
            metrics.JOBS_DEAD_LETTERED.labels(record.type, error.code).inc()
            log.warning("job dead-lettered", job_id=job_id, tenant=record.tenant, code=error.code)

    async def drain(self, grace: float) -> None:
        """Stop taking jobs, let running ones finish for ``grace`` s, hand back the rest."""
        self.allow_pick_jobs = False
        pending = [t for t in self.tasks.values() if not t.done()]
        if pending:
            log.info("draining", queue=self.kind.value, running=len(pending), grace=grace)
            await asyncio.wait(pending, timeout=grace)
        leftover = [t for t in self.tasks.values() if not t.done()]
        for task in leftover:
            task.cancel()
        await asyncio.gather(*leftover, return_exceptions=True)
        self._stopping.set()
        self._wake.set()
        if self.main_task is not None:
            await asyncio.gather(self.main_task, return_exceptions=True)

    async def run_forever(self) -> None:
        self.main_task = asyncio.create_task(self.main())
        await self.main_task


def functions_for(kind: QueueKind, runners: dict[str, Any], grace: float) -> list[Function]:
    """ARQ functions named after job types; ARQ's own timeout is only a backstop."""
    from arq.worker import func

    return [
        func(runner.run, name=name, timeout=runner.job_type.timeout + grace, max_tries=1_000_000)
        for name, runner in runners.items()
        if runner.job_type.queue is kind
    ]
