"""An ARQ worker with the guarantees tgflow adds: wake-on-enqueue, job leases, drain,
priorities.

ARQ polls its queue every ``poll_delay`` and marks a running job with an in-progress
key that lives for the longest timeout plus 10 s, so a crashed worker's job waits that
long. Here the key is a short lease renewed while the job runs (a dead worker's jobs
run again within one lease), and a Redis pub/sub nudge sent next to every enqueue wakes
idle consumers at once, with polling kept as the fallback.

Each poll reads the due part of the high-priority band first, then the normal band
(see ``shared.jobs.routing``), in one round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any

from arq import Retry, Worker
from arq.constants import abort_jobs_ss, in_progress_key_prefix
from arq.jobs import SerializationError, deserialize_job_raw
from arq.utils import ms_to_datetime, timestamp_ms
from arq.worker import Function
from redis.exceptions import RedisError

from services.worker import metrics
from services.worker.state import WorkerState
from shared import serialization
from shared.aio import raise_if_cancelling, sleep_unless
from shared.config import WorkerSettings
from shared.jobs import QueueKind, queue_key
from shared.jobs.envelope import to_micros, utcnow
from shared.jobs.record import JobErrorInfo
from shared.jobs.routing import BAND_EDGE_MS, HIGH_SHIFT_MS, due_ms_of, is_high
from shared.logs import get_logger
from shared.queue import Claim

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
        queue_name: str | None = None,
        slots: asyncio.BoundedSemaphore | None = None,
        poll_delay: float | None = None,
    ) -> None:
        settings = state.settings
        super().__init__(
            functions=functions,
            queue_name=queue_name or queue_key(kind),
            redis_pool=state.arq,
            handle_signals=False,
            max_jobs=concurrency,
            poll_delay=poll_delay or settings.worker_poll_delay,
            keep_result=0,
            max_tries=1_000_000,  # tries are counted by the job runner, per job type
            allow_abort_jobs=True,
            ctx={"state": state},
            log_results=False,
            job_serializer=serialization.dumps,  # never ARQ's pickle default
            job_deserializer=serialization.loads,
        )
        self.ctx["consumer"] = self
        if slots is not None:
            self.sem = slots  # one budget of running jobs shared by several queues
        self.kind = kind
        self.state = state
        self.lease_s = settings.job_lease_seconds
        self.in_progress_timeout_s = self.lease_s
        self._wake = asyncio.Event()
        self._polling_done = asyncio.Event()  # no more polls, no more starts
        self._stopping = asyncio.Event()  # and no more lease renewals
        self._renewer: asyncio.Task[None] | None = None
        self._high: set[str] = set()  # running jobs that came from the high band
        self._next_poll_s = self.poll_delay_s
        self.started_by_claim: set[str] = set()  # claims that also recorded the start
        self.finished_by_run: set[str] = set()  # runs whose last transition finished ARQ's job
        self.overran: set[str] = set()  # runs cancelled by the backstop timeout

    async def _poll_iteration(self) -> None:
        """ARQ's poll, reading due high-priority jobs before due normal ones.

        The same round trip finds the next job not yet due in each band, so the loop
        sleeps until then (a deferred or retried job starts on time) rather than polling.
        """
        self._next_poll_s = self.poll_delay_s
        if self.allow_pick_jobs and self.job_counter < self.max_jobs:
            now = timestamp_ms()
            count = self.queue_read_limit
            queue, high_now = self.queue_name, now - HIGH_SHIFT_MS
            async with self.pool.pipeline(transaction=False) as pipe:
                pipe.zrangebyscore(queue, "-inf", high_now, start=0, num=count)
                pipe.zrangebyscore(queue, BAND_EDGE_MS, now, start=0, num=count)
                pipe.zrangebyscore(
                    queue, f"({high_now}", f"({BAND_EDGE_MS}", start=0, num=1, withscores=True
                )
                pipe.zrangebyscore(queue, f"({now}", "+inf", start=0, num=1, withscores=True)
                pipe.exists(abort_jobs_ss)
                high, normal, next_high, next_normal, aborts = await pipe.execute()
            upcoming = [due_ms_of(score) for _, score in [*next_high, *next_normal]]
            if upcoming:
                wait = max(0.0, (min(upcoming) - now) / 1000)
                self._next_poll_s = min(self.poll_delay_s, wait)
            await self.start_jobs(high + normal)
        else:
            aborts = await self.pool.exists(abort_jobs_ss)
        if aborts and self.job_tasks:
            await self._cancel_aborted_jobs()
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                task.result()  # surface errors of ARQ's own job handling
        await self.heart_beat()

    async def run_claimed(self, job_id: str, claim: Claim) -> None:
        """ARQ's run of a job, from what the claim already read.

        The claim counted the try, read the job definition and took its abort mark, so
        the run needs no round trip of its own before the handler starts. As with ARQ, a
        ``Retry`` puts the job back at a later score, a cancellation by the API finishes
        it, and a cancellation by shutdown leaves it for another run.
        """
        if is_high(claim.score):
            self._high.add(job_id)
        try:
            await self._run_claimed(job_id, claim)
        finally:
            self._high.discard(job_id)

    async def _run_claimed(self, job_id: str, claim: Claim) -> None:
        function = None
        if claim.payload is not None and not claim.aborted:
            try:
                name, args, kwargs, _, enqueued_ms = deserialize_job_raw(
                    claim.payload, deserializer=self.job_deserializer
                )
            except SerializationError:
                log.exception("job definition unreadable", job_id=job_id)
            else:
                function = self.functions.get(name)
        if function is None:  # expired, unreadable, unknown or aborted before the start
            self.jobs_failed += 1
            await asyncio.shield(self.finish_failed_job(job_id, None))
            return
        ctx = {
            **self.ctx,
            "job_id": job_id,
            "job_try": claim.tries,
            "enqueue_time": ms_to_datetime(enqueued_ms),
            "score": claim.score,
        }
        run = function.coroutine(ctx, *args, **kwargs)
        finish, incr_score = await self._await_run(job_id, claim, run, function.timeout_s)
        if finish and job_id not in self.finished_by_run:
            # The run ended without its last word (cancelled before it began, or failed
            # outside its handler): the job's record must not stay queued or running
            # once ARQ's job is gone.
            await asyncio.shield(self.finish_failed_job(job_id, None))
            return
        await asyncio.shield(self.finish_job(job_id, finish, None, None, False, incr_score, None))

    async def _await_run(
        self, job_id: str, claim: Claim, run: Awaitable[Any], backstop_s: float | None
    ) -> tuple[bool, int | None]:
        """Run the job's function: whether ARQ's job is finished, and its new score."""
        finish, incr_score = False, None
        task = asyncio.ensure_future(run)
        self.job_tasks[job_id] = task
        backstop = None
        if backstop_s is not None:
            loop = asyncio.get_running_loop()
            backstop = loop.call_later(backstop_s, self._overrun, job_id, task)
        try:
            await task
        except Retry as exc:
            self.jobs_retried += 1
            if exc.defer_score:
                incr_score = exc.defer_score + (timestamp_ms() - claim.score)
        except asyncio.CancelledError:
            if job_id in self.aborting_tasks or job_id in self.overran:  # the API, a backstop
                self.jobs_failed += 1
                finish = True
            else:  # shutdown or hand-off: another run will take it
                self.jobs_retried += 1
        except Exception:
            log.exception("job run failed outside its handler", job_id=job_id)
            self.jobs_failed += 1
            finish = True
        else:
            self.jobs_complete += 1
            finish = True
        finally:
            if backstop is not None:
                backstop.cancel()
            del self.job_tasks[job_id]
            self.aborting_tasks.discard(job_id)  # a cancel that came too late stays unused
            self.overran.discard(job_id)
        return finish, incr_score

    def _overrun(self, job_id: str, task: asyncio.Future[Any]) -> None:
        """ARQ's timeout, a backstop (see ``functions_for``): the run went on past its own
        timeout and the margin. The runner records a timeout, as at its own."""
        log.warning("job ran past its backstop timeout", job_id=job_id)
        self.overran.add(job_id)
        task.cancel()

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        """ARQ's finish, unless the run's last transition did it already; and since ARQ
        re-scores a retried job at now + delay, keep a high job in its band."""
        self.started_by_claim.discard(job_id)
        if job_id in self.finished_by_run:
            self.finished_by_run.discard(job_id)
            if finish:
                return
        if incr_score and job_id in self._high:
            incr_score -= HIGH_SHIFT_MS
        await super().finish_job(
            job_id,
            finish,
            result_data,
            result_timeout_s,
            keep_result_forever,
            incr_score,
            keep_in_progress,
        )

    def wake(self) -> None:
        self._wake.set()

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self._wake.set()  # a free slot: look at the queue again now

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Claim and start as many of ``job_ids`` as there are free slots, in one round
        trip, waiting for a slot only when none is free.

        ARQ claims a job with WATCH, EXISTS, ZSCORE and MULTI/EXEC (four round trips)
        and then reads it in a fifth; here one script per job does all of it, and the
        claims of one poll go out together. A running job stays in the queue's sorted
        set until it finishes, so every poll reads it again: our own running jobs are
        skipped without asking Redis. Once draining has begun nothing more starts, even
        after a wait for a free slot.
        """
        fresh = [i for i in (b.decode() for b in job_ids) if i not in self.tasks]
        while fresh:
            await self.sem.acquire()
            taken = 1
            room = self.max_jobs - self.job_counter
            while taken < min(len(fresh), room) and not self.sem.locked():
                await self.sem.acquire()
                taken += 1
            if not self.allow_pick_jobs or room < 1:
                for _ in range(taken):
                    self.sem.release()
                return
            batch, fresh = fresh[:taken], fresh[taken:]
            await self._claim_and_start(batch)

    async def _claim_and_start(self, batch: list[str]) -> None:
        """Claim ``batch`` (a slot already held for each) and start what was claimed."""
        self.job_counter += len(batch)
        lease_ms, now_us = int(self.in_progress_timeout_s * 1000), to_micros(utcnow())
        claims = await asyncio.gather(
            *(
                self.state.jobs.claim(
                    job_id,
                    self.queue_name,
                    lease_ms=lease_ms,
                    worker=self.state.instance_id,
                    now_us=now_us,
                )
                for job_id in batch
            ),
            return_exceptions=True,
        )
        failure: BaseException | None = None
        for job_id, claim in zip(batch, claims, strict=True):
            if not isinstance(claim, Claim):
                # Taken elsewhere, finished or moved later; or Redis failed (a claim
                # that did land lapses with its lease, and the job runs again).
                failure = failure or claim
                self.job_counter -= 1
                self.sem.release()
                continue
            if claim.started:
                self.started_by_claim.add(job_id)
            task = asyncio.create_task(self.run_claimed(job_id, claim))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task
        if failure is not None:
            raise failure

    async def main(self) -> None:
        """ARQ's loop, but sleeping on the nudge event instead of a fixed delay."""
        self.ctx["redis"] = self.pool
        self._renewer = asyncio.create_task(self._renew_leases())
        backoff = 0.05
        while not self._polling_done.is_set():
            try:
                await self._poll_iteration()
                backoff = 0.05
            except (RedisError, OSError) as exc:  # ride out Redis restarts
                raise_if_cancelling()
                log.warning("queue poll failed", queue=self.queue_name, error=str(exc))
                await sleep_unless(self._polling_done, backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            metrics.JOBS_RUNNING.labels(self.kind.value).set(len(self.tasks))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._next_poll_s)
            self._wake.clear()

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
        self.started_by_claim.discard(job_id)
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
        """Stop taking jobs, let running ones finish for ``grace`` s, hand back the rest.

        The poll loop stops first, so no job can start behind the drain's back; job
        leases stay renewed until every job is done or handed back.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self.allow_pick_jobs = False
        self._polling_done.set()
        self._wake.set()
        if self.main_task is not None and not self.main_task.done():
            # It may be waiting for a slot another queue holds; then stop it there.
            await asyncio.wait({self.main_task}, timeout=grace)
            self.main_task.cancel()
            await asyncio.gather(self.main_task, return_exceptions=True)
        pending = [t for t in self.tasks.values() if not t.done()]
        if pending:
            log.info("draining", queue=self.queue_name, running=len(pending), grace=grace)
            await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()))
        leftover = [t for t in self.tasks.values() if not t.done()]
        for task in leftover:
            task.cancel()
        await asyncio.gather(*leftover, return_exceptions=True)
        self._stopping.set()
        if self._renewer is not None:
            await asyncio.gather(self._renewer, return_exceptions=True)

    async def run_forever(self) -> None:
        self.main_task = asyncio.create_task(self.main())
        await self.main_task


# ARQ's own timeout is a backstop: the job's own (JobRunner._invoke) comes first, and the
# run then records its outcome. Only a run that is still going this long after its own
# timeout (stuck past cancellation) meets the backstop. A Telegram send outlives a cancel
# by up to one request timeout more (tasks.telegram.send_once).
BACKSTOP_MARGIN_S = 30.0


def functions_for(
    kind: QueueKind, runners: dict[str, Any], settings: WorkerSettings
) -> list[Function]:
    """ARQ functions named after job types, with the backstop timeout."""
    from arq.worker import func

    margin = BACKSTOP_MARGIN_S
    if kind is QueueKind.TELEGRAM:
        margin += settings.telegram_request_timeout
    return [
        func(runner.run, name=name, timeout=runner.job_type.timeout + margin, max_tries=1_000_000)
        for name, runner in runners.items()
        if runner.job_type.queue is kind
    ]
