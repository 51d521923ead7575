"""Run one job: record each transition, apply the timeout, map errors to outcomes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

import orjson
import structlog
from arq import Retry
from arq.constants import retry_key_prefix
from opentelemetry.trace import SpanKind, Status, StatusCode
from redis.exceptions import RedisError

from services.worker import metrics
from services.worker.context import JobContext
from services.worker.outcomes import Action, Outcome, classify, retry_delay
from services.worker.state import WorkerState
from services.worker.tasks import Handler
from shared.aio import outlast_cancellation
from shared.jobs import JobType
from shared.jobs.envelope import Envelope, to_micros, utcnow
from shared.jobs.record import JobErrorInfo
from shared.logs import get_logger
from shared.telemetry import extract_context

log = get_logger(__name__)
# A cancelled job's error when its effect was under way, with no answer, at the cancel.
IN_DOUBT = (
    "The job was cancelled after its request went out and before an answer came: "
    "it may have taken effect."
)


def _now_us() -> str:
    return str(to_micros(utcnow()))


def _error(code: str, message: str, details: dict[str, Any] | None = None) -> str:
    return JobErrorInfo(code=code, message=message, details=details).model_dump_json()


class JobRunner:
    """Wraps a handler as the ARQ function of one job type."""

    def __init__(self, job_type: JobType[Any, Any], handler: Handler) -> None:
        self.job_type = job_type
        self.handler = handler

    async def run(self, ctx: dict[str, Any], raw: dict[str, Any]) -> None:
        """The ARQ function body: one run of one job."""
        state: WorkerState = ctx["state"]
        env = Envelope.model_validate(raw)
        attempt = int(ctx["job_try"])
        structlog.contextvars.bind_contextvars(
            job_id=env.id, tenant=env.tenant, job_type=env.type, attempt=attempt
        )
        try:
            with state.tracer.start_as_current_span(
                f"job {env.type}",
                context=extract_context(env.trace),
                kind=SpanKind.CONSUMER,
                attributes={
                    "tgflow.job.id": env.id,
                    "tgflow.job.type": env.type,
                    "tgflow.tenant": env.tenant,
                    "tgflow.job.attempt": attempt,
                },
            ) as span:
                await self._run(state, ctx, env, attempt, span)
        except (RedisError, OSError) as exc:
            # The job's state could not be recorded (Redis blinked). Never let ARQ count
            # this as the job finishing: put it back and run it again shortly.
            log.warning("job outcome not recorded; running it again", error=type(exc).__name__)
            raise Retry(defer=timedelta(seconds=1)) from exc
        finally:
            structlog.contextvars.unbind_contextvars("job_id", "tenant", "job_type", "attempt")

    async def _run(
        self, state: WorkerState, ctx: dict[str, Any], env: Envelope, attempt: int, span: Any
    ) -> None:
        consumer = ctx["consumer"]
        if attempt > self.job_type.retry.max_tries + 2:
            # The job keeps killing its worker before it can record an outcome.
            await self._finish_failed(
                state, ctx, env, Outcome(Action.FAIL, "attempts_exhausted", "Too many attempts.")
            )
            return
        if env.id in consumer.started_by_claim:
            consumer.started_by_claim.discard(env.id)  # the claim recorded the start
        else:
            changed, previous = await state.jobs.transition(
                env.id,
                {
                    "status": "running",
                    "attempts": str(attempt),
                    "started_at": _now_us(),
                    "worker": state.instance_id,
                },
                allowed_from=("queued", "running"),
            )
            if not changed:
                log.info("job not started", status=previous)
                return
        metrics.JOBS_STARTED.labels(env.type).inc()
        metrics.JOB_QUEUE_WAIT.labels(env.type).observe(
            max(0.0, (utcnow() - env.run_at).total_seconds())
        )
        log.info("job started")
        state.running[env.id] = env.type
        start = time.perf_counter()
        job = JobContext(state, env, attempt)
        try:
            result = await self._invoke(job)
        except asyncio.CancelledError:
            await self._settle(ctx, env, self._cancelled(state, ctx, env, job))
            raise
        except Exception as exc:
            outcome = classify(exc)
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, outcome.code))
            await self._settle(ctx, env, self._failed(state, ctx, env, job, outcome))
        else:
            await self._settle(ctx, env, self._succeeded(state, ctx, env, result, job.extra))
            log.info("job succeeded", duration=round(time.perf_counter() - start, 6))
        finally:
            state.running.pop(env.id, None)
            metrics.JOB_DURATION.labels(env.type).observe(time.perf_counter() - start)

    async def _invoke(self, job: JobContext) -> Any:
        params = self.job_type.params.model_validate(job.envelope.params)
        async with asyncio.timeout(job.envelope.timeout):
            result = await self.handler(job, params)
        return self.job_type.result.model_validate(result).model_dump(mode="json")

    async def _settle(
        self, ctx: dict[str, Any], env: Envelope, step: Coroutine[Any, Any, None]
    ) -> None:
        """Record the run's outcome to the end, whatever cancellation comes meanwhile.

        Cut halfway, a retry or deferral would leave the job queued while the run goes
        on to finish ARQ's job (queued in no queue), and a success or failure would
        leave it running. A cancel through the API that came meanwhile still ends a job
        the outcome put back in its queue; a job that ended stays as it ended.
        """
        recording = asyncio.ensure_future(step)
        came = await outlast_cancellation(recording)
        if came and env.id in ctx["consumer"].aborting_tasks:
            ending = asyncio.ensure_future(
                self._record_cancelled(ctx, env, {}, allowed_from=("queued",))
            )
            await outlast_cancellation(ending)
            if ending.result():
                if not recording.cancelled():
                    recording.exception()  # its Retry is moot: the job has ended
                raise asyncio.CancelledError
        recording.result()

    async def _succeeded(
        self,
        state: WorkerState,
        ctx: dict[str, Any],
        env: Envelope,
        result: Any,
        extra: dict[str, str],
    ) -> None:
        fields = {
            "status": "succeeded",
            "result": orjson.dumps(result).decode(),
            "error": "",
            "finished_at": _now_us(),
            **extra,
        }
        await self._last_word(state, ctx, env, fields, allowed_from=("running",))
        metrics.JOBS_SUCCEEDED.labels(env.type).inc()

    async def _last_word(
        self,
        state: WorkerState,
        ctx: dict[str, Any],
        env: Envelope,
        fields: dict[str, str],
        *,
        allowed_from: tuple[str, ...],
    ) -> bool:
        """A final transition that also finishes ARQ's job, in one step."""
        consumer = ctx["consumer"]
        changed, _ = await state.jobs.transition(
            env.id, fields, allowed_from=allowed_from, final=True, arq_queue=consumer.queue_name
        )
        if changed:
            consumer.finished_by_run.add(env.id)
        return changed

    async def _failed(
        self,
        state: WorkerState,
        ctx: dict[str, Any],
        env: Envelope,
        job: JobContext,
        outcome: Outcome,
    ) -> None:
        attempt, extra = job.attempt, job.extra
        policy = self.job_type.retry
        deferred = outcome.action is Action.DEFER and outcome.until is not None
        retried = outcome.action is Action.RETRY and attempt < policy.max_tries
        if (deferred or retried) and env.id in ctx["consumer"].aborting_tasks:
            # Cancelled by the API while a step outlasted the cancel, which then failed
            # (the job's own timeout came meanwhile, say): the job ends as cancelled, not
            # run again, and says what that step left in doubt.
            await self._record_cancelled(
                ctx, env, extra, allowed_from=("running",), in_doubt=job.in_doubt
            )
            return
        if deferred:
            await self._defer(state, env, outcome, extra)
        if retried:
            delay = retry_delay(policy, attempt, outcome.until)
            await state.jobs.transition(
                env.id,
                {
                    "status": "queued",
                    "error": _error(outcome.code, outcome.message),
                    "run_at": str(to_micros(utcnow() + timedelta(seconds=delay))),
                    **extra,
                },
                allowed_from=("running",),
                failure=JobErrorInfo(code=outcome.code, message=outcome.message),
            )
            metrics.JOBS_RETRIED.labels(env.type, outcome.code).inc()
            log.warning("job will retry", code=outcome.code, delay=round(delay, 3))
            raise Retry(defer=timedelta(seconds=delay))
        await self._finish_failed(state, ctx, env, outcome, extra)

    async def _defer(
        self, state: WorkerState, env: Envelope, outcome: Outcome, extra: dict[str, str]
    ) -> None:
        """Run again at ``outcome.until`` without spending a try (a wait, not a failure)."""
        assert outcome.until is not None
        delay = max(0.0, (outcome.until - utcnow()).total_seconds())
        await state.jobs.transition(
            env.id,
            {
                "status": "queued",
                "error": _error(outcome.code, outcome.message),
                "run_at": str(to_micros(outcome.until)),
                **extra,
            },
            allowed_from=("running",),
        )
        # ARQ counts every pickup as a try; give this one back.
        await state.arq.decr(retry_key_prefix + env.id)
        metrics.JOBS_DEFERRED.labels(env.type, outcome.code).inc()
        log.info("job deferred", code=outcome.code, delay=round(delay, 3))
        raise Retry(defer=timedelta(seconds=delay))

    async def _finish_failed(
        self,
        state: WorkerState,
        ctx: dict[str, Any],
        env: Envelope,
        outcome: Outcome,
        extra: dict[str, str] | None = None,
    ) -> None:
        """Fail the job for good; the same step dead-letters it (see JobStore.transition)."""
        changed = await self._last_word(
            state,
            ctx,
            env,
            {
                "status": "failed",
                "error": _error(outcome.code, outcome.message, outcome.details),
                "finished_at": _now_us(),
                **(extra or {}),
            },
            allowed_from=("queued", "running"),
        )
        metrics.JOBS_FAILED.labels(env.type, outcome.code).inc()
        log.warning("job failed", code=outcome.code, error=outcome.message)
        if changed:
            metrics.JOBS_DEAD_LETTERED.labels(env.type, outcome.code).inc()
            log.warning("job dead-lettered", code=outcome.code)

    async def _cancelled(
        self,
        state: WorkerState,
        ctx: dict[str, Any],
        env: Envelope,
        job: JobContext,
    ) -> None:
        """Cancelled by the API (record it), by ARQ's backstop timeout (a timeout, as the
        job's own) or by shutdown (hand the job back)."""
        consumer = ctx["consumer"]
        if env.id in consumer.aborting_tasks:
            await self._record_cancelled(
                ctx, env, job.extra, allowed_from=("running",), in_doubt=job.in_doubt
            )
            return
        if env.id in consumer.overran:
            await self._failed(state, ctx, env, job, classify(TimeoutError()))
            return
        try:
            await state.jobs.transition(
                env.id, {"status": "queued", "worker": "", **job.extra}, allowed_from=("running",)
            )
            # Handing back is not the job's failure: give back ARQ's count of the try.
            await state.arq.decr(retry_key_prefix + env.id)
        except (RedisError, OSError) as exc:
            # Redis is away (this worker may be fencing itself off): the job lease lapses
            # and whoever owns the queue next runs the job again.
            log.warning("job hand-back not recorded", error=type(exc).__name__)
        metrics.JOBS_REQUEUED.labels(env.type).inc()
        log.info("job handed back for another run")

    async def _record_cancelled(
        self,
        ctx: dict[str, Any],
        env: Envelope,
        extra: dict[str, str],
        *,
        allowed_from: tuple[str, ...],
        in_doubt: dict[str, Any] | None = None,
    ) -> bool:
        """End the job cancelled, and ARQ's job with it, if it is in ``allowed_from``.

        ``in_doubt``: the job's effect was under way, with no answer, when the cancel cut
        it (see ``JobContext.in_doubt``); the error says so, with these details.
        """
        error = _error("cancelled", "The job was cancelled.")
        if in_doubt:
            error = _error("cancelled", IN_DOUBT, in_doubt)
        fields = {"status": "cancelled", "error": error, "finished_at": _now_us(), **extra}
        changed = await self._last_word(ctx["state"], ctx, env, fields, allowed_from=allowed_from)
        if changed:
            metrics.JOBS_CANCELLED.labels(env.type).inc()
            log.info("job cancelled")
        return changed
