"""Provider faults from the sandbox: 429 with Retry-After, 500s, timeouts, the breaker."""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY

from services.sandbox.admin_client import SandboxAdmin
from services.worker.ai.breaker import breaker_key
from tests.ai.conftest import Configure, ai_stack, model_requests, run, submit
from tests.helpers import eventually, wait_for_status

PROMPT = "Rain fell on the quiet town. The river rose. People stayed at home."


def _seconds(job: dict[str, Any], start: str, end: str) -> float:
    from datetime import datetime

    delta = datetime.fromisoformat(job[end]) - datetime.fromisoformat(job[start])
    return delta.total_seconds()


async def test_429_is_retried_after_retry_after(
    providers: Configure, model: SandboxAdmin, redis: Any
) -> None:
    await model.add_ai_fault("rate_limit", times=1, retry_after=1)
    async with ai_stack() as client:
        job = await run(client, {"prompt": PROMPT})
        cooldown = await redis.hget(breaker_key("sandbox"), "cooldown")
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    assert _seconds(job, "created_at", "started_at") >= 1.0  # the retry waited Retry-After
    assert job["error"] is None
    assert cooldown is not None  # other jobs were held back too
    assert await model_requests(model) == 2


async def test_server_errors_are_retried_with_backoff(
    providers: Configure, model: SandboxAdmin
) -> None:
    await model.add_ai_fault("server_error", times=2)
    async with ai_stack() as client:
        job = await run(client, {"prompt": PROMPT}, timeout=20)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 3
    assert await model_requests(model) == 3


async def test_a_hung_provider_times_out_and_is_retried(
    providers: Configure, model: SandboxAdmin
) -> None:
    providers(read_timeout=1.0)
    await model.add_ai_fault("timeout", times=1, seconds=10)
    async with ai_stack() as client:
        job = await run(client, {"prompt": PROMPT}, timeout=20)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2


async def test_breaker_opens_probes_and_closes(
    providers: Configure, model: SandboxAdmin, redis: Any
) -> None:
    providers(breaker_failures=2, breaker_open_seconds=3.5)  # well past the 2nd backoff (≤ 2 s)
    await model.add_ai_fault("server_error", times=2)
    async with ai_stack() as client:
        job_id = await submit(client, {"prompt": PROMPT})
        await eventually(lambda: _state(redis, "open"), timeout=10)
        # The gauge follows the shared state as soon as the worker has recorded it.
        await eventually(lambda: _gauge_is(2), timeout=2)
        job = await wait_for_status(client, job_id, {"succeeded", "failed"}, timeout=20)
    assert job["status"] == "succeeded", job
    # Two 500s opened it, the next attempt was refused, the probe after it succeeded.
    assert job["attempts"] == 4
    assert await _state(redis, "closed")
    assert _breaker_metric() == 0
    assert await model_requests(model) == 3


async def _gauge_is(value: float) -> bool:
    return _breaker_metric() == value


def _breaker_metric() -> float | None:
    return REGISTRY.get_sample_value("tgflow_ai_breaker_state", {"provider": "sandbox"})


async def _state(redis: Any, expected: str) -> bool:
    return bool(await redis.hget(breaker_key("sandbox"), "state") == expected)


async def test_breaker_gauge_follows_the_cluster_state(providers: Configure, redis: Any) -> None:
    """Another worker's breaker changes reach this worker's gauge without a call here."""
    async with ai_stack(heartbeat_seconds=0.1):
        await redis.hset(breaker_key("sandbox"), mapping={"state": "open", "until": 0})
        await eventually(lambda: _metric_is(2), timeout=5)
        await redis.hset(breaker_key("sandbox"), "state", "closed")
        await eventually(lambda: _metric_is(0), timeout=5)


async def _metric_is(value: float) -> bool:
    return _breaker_metric() == value
