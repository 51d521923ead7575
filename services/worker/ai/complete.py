"""ai.complete: cache, admission, the provider call, accounting, in that order."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.worker.ai import cache, metrics, usage
from services.worker.ai.admission import Ticket
from services.worker.ai.client import ChatAnswer, Progress
from services.worker.ai.errors import ProviderError
from services.worker.ai.runtime import AiRuntime
from services.worker.context import JobContext
from shared.errors import PermanentFailure
from shared.jobs.ai import (
    CompleteParams,
    CompleteResult,
    ModelSpec,
    ProviderSpec,
    TokenUsage,
    check_prompt,
    estimate_tokens,
    prompt_tokens,
)
from shared.jobs.contract import ParamsRejected
from shared.jobs.envelope import utcnow
from shared.logs import get_logger

log = get_logger(__name__)

PROGRESS_EVERY = 1.0  # seconds between progress updates of a streamed answer
CONTENT_LOG_CHARS = 4000  # with TGFLOW_AI_LOG_CONTENT, text beyond this is cut


@dataclass(frozen=True)
class Plan:
    """One call, decided: where it goes and what is sent."""

    provider: ProviderSpec
    model: str
    spec: ModelSpec
    body: dict[str, Any]
    prompt_estimate: int
    params: CompleteParams


def plan(ai: AiRuntime, params: CompleteParams) -> Plan:
    """Resolve provider and model and build the request body; bad input fails the job."""
    try:
        check_prompt(params, ai.settings)
        provider, model = ai.catalog.resolve(params.provider, params.model)
    except ParamsRejected as exc:
        raise PermanentFailure(exc.code, exc.message) from None
    spec = provider.model(model)
    assert spec is not None
    messages = params.chat()
    body: dict[str, Any] = {
        "model": model,
        "messages": [m.model_dump() for m in messages],
    }
    if params.max_tokens is not None:
        body["max_tokens"] = params.max_tokens
    if params.temperature is not None:
        body["temperature"] = params.temperature
    if params.response_schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": params.schema_name,
                "schema": params.response_schema,
                "strict": True,
            },
        }
    return Plan(provider, model, spec, body, prompt_tokens(messages, spec), params)


async def complete(ai: AiRuntime, ctx: JobContext, params: CompleteParams) -> CompleteResult:
    """Answer from the cache, or call the provider within its limits and account for it."""
    call = plan(ai, params)
    key = None
    if params.cache:
        key = cache.cache_key(ctx.tenant, call.provider.name, call.model, call.body)
        hit = await _cached(ai, ctx, call, key)
        if hit is not None:
            return hit
    reserve = call.prompt_estimate + (params.max_tokens or 0)
    recording: asyncio.Task[None] | None = None
    try:
        async with ai.admission.admit(call.provider, ctx.job_id, reserve) as ticket:
            requested_at = utcnow()
            answer, seconds = await _call(ai, ctx, call, ticket)
            result = _result(call, answer, seconds, requested_at)
            ticket.used_tokens = result.usage.total_tokens
            # The ledger write overlaps giving the slot back.
            recording = asyncio.create_task(_account(ai, ctx, call, result, key))
    finally:
        if recording is not None:
            await recording
    _observe(ai, call, result)
    await ai.prune_cache_now_and_then()
    return result


async def _account(
    ai: AiRuntime, ctx: JobContext, call: Plan, result: CompleteResult, key: str | None
) -> None:
    """Ledger row and cache entry; a structured answer that is not JSON fails the job."""
    row = usage.UsageRow(
        ctx.tenant,
        ctx.job_id,
        ctx.attempt,
        call.provider.name,
        call.model,
        result.usage.prompt_tokens,
        result.usage.completion_tokens,
        result.cost,
        cached=False,
    )
    try:
        result.data = _structured(call, result.text)
    except PermanentFailure:
        await usage.record(ai.db, row)  # the tokens were spent all the same
        raise
    entry = None
    if key is not None:
        ttl = call.params.cache_ttl_seconds or ai.settings.ai_cache_ttl
        entry = usage.CacheEntry(key, result.model_dump(mode="json"), ttl)
    await usage.record(ai.db, row, entry)


async def _cached(ai: AiRuntime, ctx: JobContext, call: Plan, key: str) -> CompleteResult | None:
    start = time.perf_counter()
    stored = await cache.lookup(ai.db, key)
    name = call.provider.name
    if stored is None:
        metrics.CACHE_MISSES.labels(name).inc()
        return None
    metrics.CACHE_HITS.labels(name).inc()
    result = CompleteResult.model_validate(stored)
    result.cached = True
    result.cost = 0.0
    result.latency_ms = round((time.perf_counter() - start) * 1000, 3)
    result.requested_at = utcnow()
    row = usage.UsageRow(
        ctx.tenant, ctx.job_id, ctx.attempt, name, call.model, 0, 0, 0.0, cached=True
    )
    await usage.record(ai.db, row)
    _observe(ai, call, result)
    return result


async def _call(
    ai: AiRuntime, ctx: JobContext, call: Plan, ticket: Ticket
) -> tuple[ChatAnswer, float]:
    """The provider call in its own span; how it went goes to the ticket for the breaker."""
    provider = call.provider
    attributes: dict[str, str | bool] = {
        "gen_ai.system": provider.name,
        "gen_ai.request.model": call.model,
        "tgflow.ai.stream": call.params.stream,
        "tgflow.ai.probe": ticket.probe,
    }
    with ctx.state.tracer.start_as_current_span(
        f"ai.chat {provider.name}", kind=SpanKind.CLIENT, attributes=attributes
    ) as span:
        start = time.perf_counter()
        try:
            answer = await ai.client.complete(
                provider, call.body, stream=call.params.stream, progress=_progress(ctx)
            )
        except ProviderError as exc:
            seconds = time.perf_counter() - start
            metrics.REQUESTS.labels(provider.name, call.model, exc.outcome).inc()
            metrics.DURATION.labels(provider.name, call.model).observe(seconds)
            ticket.result = "failure" if exc.breaker else "neutral"
            if exc.outcome == "rate_limited" and exc.retry_after:
                ticket.cool_down = exc.retry_after
            span.set_status(Status(StatusCode.ERROR, exc.code))
            log.warning(
                "ai call failed",
                provider=provider.name,
                model=call.model,
                code=exc.code,
                latency_ms=round(seconds * 1000, 3),
            )
            raise exc.as_failure() from None
        ticket.result = "success"
        span.set_attribute("gen_ai.usage.input_tokens", answer.prompt_tokens or 0)
        span.set_attribute("gen_ai.usage.output_tokens", answer.completion_tokens or 0)
        span.set_attribute("gen_ai.response.finish_reasons", [answer.finish_reason])
        return answer, time.perf_counter() - start


def _progress(ctx: JobContext) -> Progress:
    """Record a streamed answer's growth on the job, at most once per ``PROGRESS_EVERY``."""
    last = 0.0

    async def report(chars: int, chunks: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < PROGRESS_EVERY:
            return
        last = now
        progress = orjson.dumps({"step": "generating", "chars": chars, "chunks": chunks})
        await ctx.state.jobs.transition(
            ctx.job_id, {"progress": progress.decode()}, allowed_from=("running",)
        )

    return report


def _result(call: Plan, answer: ChatAnswer, seconds: float, requested_at: Any) -> CompleteResult:
    estimated = answer.prompt_tokens is None or answer.completion_tokens is None
    prompt = answer.prompt_tokens if answer.prompt_tokens is not None else call.prompt_estimate
    completion = answer.completion_tokens
    if completion is None:
        completion = estimate_tokens(answer.text, call.spec)
    return CompleteResult(
        text=answer.text,
        finish_reason=answer.finish_reason,
        usage=TokenUsage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            estimated=estimated,
        ),
        latency_ms=round(seconds * 1000, 3),
        provider=call.provider.name,
        model=call.model,
        cost=round(call.spec.cost(prompt, completion), 10),
        streamed=call.params.stream,
        requested_at=requested_at,
    )


def _structured(call: Plan, text: str) -> Any:
    """The parsed answer when a schema was asked for."""
    if call.params.response_schema is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        raise PermanentFailure(
            "invalid_structured_output", "The answer is not the JSON response_schema asked for."
        ) from None


def _observe(ai: AiRuntime, call: Plan, result: CompleteResult) -> None:
    """Metrics and one log line: sizes, tokens, timings; the text only if configured."""
    name, model = call.provider.name, call.model
    if result.cached:
        metrics.REQUESTS.labels(name, model, "cached").inc()
    else:
        metrics.REQUESTS.labels(name, model, "ok").inc()
        metrics.DURATION.labels(name, model).observe(result.latency_ms / 1000)
        metrics.TOKENS.labels(name, model, "prompt").inc(result.usage.prompt_tokens)
        metrics.TOKENS.labels(name, model, "completion").inc(result.usage.completion_tokens)
        metrics.COST.labels(name, model).inc(result.cost)
    fields: dict[str, Any] = {
        "provider": name,
        "model": model,
        "cached": result.cached,
        "streamed": result.streamed,
        "finish": result.finish_reason,
        "latency_ms": result.latency_ms,
        # "token" in a key would be scrubbed from logs as a secret; hence "tok_".
        "tok_in": result.usage.prompt_tokens,
        "tok_out": result.usage.completion_tokens,
        "prompt_chars": sum(len(m["content"]) for m in call.body["messages"]),
        "completion_chars": len(result.text),
    }
    if ai.settings.ai_log_content:
        fields["prompt"] = orjson.dumps(call.body["messages"]).decode()[:CONTENT_LOG_CHARS]
        fields["completion"] = result.text[:CONTENT_LOG_CHARS]
    log.info("ai call", **fields)
