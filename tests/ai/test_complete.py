"""ai.complete against the sandbox model: plain, streamed, structured, cached, accounted."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import structlog

from services.sandbox.admin_client import SandboxAdmin
from services.sandbox.textmodel import count_tokens, summarize
from tests.ai.conftest import Configure, ai_stack, model_requests, run
from tests.helpers import auth

TEXT = (
    "The harbour closed at noon because of the storm. Fishing boats stayed in the harbour. "
    "Children watched the storm from the old pier. The storm damaged two fishing boats. "
    "By evening the harbour reopened and the boats went out again."
)


async def test_completion_returns_text_usage_and_provenance(
    providers: Configure, model: SandboxAdmin
) -> None:
    async with ai_stack() as client:
        job = await run(client, {"prompt": TEXT, "system": "Summarize.", "cache": False})
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["text"] == summarize(TEXT)
    assert result["finish_reason"] == "stop"
    assert (result["provider"], result["model"]) == ("sandbox", "sandbox-extractive-1")
    assert result["cached"] is False
    assert result["streamed"] is False
    usage = result["usage"]
    assert usage["completion_tokens"] == count_tokens(result["text"])
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["estimated"] is False
    assert result["latency_ms"] > 0
    assert result["cost"] == 0.0
    assert await model_requests(model) == 1


async def test_streaming_gives_the_same_answer_and_records_progress(
    providers: Configure, model: SandboxAdmin, redis: Any
) -> None:
    await model.set_ai_latency(0)
    async with ai_stack() as client:
        plain = await run(client, {"prompt": TEXT, "cache": False})
        streamed = await run(client, {"prompt": TEXT, "cache": False, "stream": True})
        raw = await redis.hgetall(f"tgflow:job:{streamed['id']}")
    assert streamed["status"] == "succeeded", streamed
    assert streamed["result"]["streamed"] is True
    assert streamed["result"]["text"] == plain["result"]["text"]
    assert streamed["result"]["usage"] == plain["result"]["usage"]
    assert '"step":"generating"' in raw["progress"]


async def test_max_tokens_cuts_the_answer(providers: Configure) -> None:
    async with ai_stack() as client:
        job = await run(client, {"prompt": TEXT, "max_tokens": 3, "cache": False})
    assert job["result"]["finish_reason"] == "length"
    assert job["result"]["usage"]["completion_tokens"] == 3


async def test_structured_output_is_parsed(providers: Configure) -> None:
    schema = {
        "type": "object",
        "properties": {"headline": {"type": "string"}, "words": {"type": "integer"}},
        "required": ["headline", "words"],
    }
    async with ai_stack() as client:
        job = await run(client, {"prompt": TEXT, "response_schema": schema})
    assert job["status"] == "succeeded", job
    data = job["result"]["data"]
    assert set(data) == {"headline", "words"}
    assert isinstance(data["words"], int)
    assert data["words"] > 10
    assert data["headline"] == summarize(TEXT)


async def test_a_repeated_job_is_answered_from_the_cache(
    providers: Configure, model: SandboxAdmin
) -> None:
    params = {"messages": [{"role": "user", "content": TEXT}], "temperature": 0}
    async with ai_stack() as client:
        first = await run(client, params)
        second = await run(client, params)
        other = await run(client, {**params, "temperature": 0.5})
        opted_out = await run(client, {**params, "cache": False})
    assert first["result"]["cached"] is False
    assert second["result"]["cached"] is True
    assert second["result"]["cost"] == 0
    assert second["result"]["text"] == first["result"]["text"]
    assert other["result"]["cached"] is False  # other parameters, other key
    assert opted_out["result"]["cached"] is False
    assert await model_requests(model) == 3


async def test_usage_is_accounted_per_provider_with_prices(
    providers: Configure, model: SandboxAdmin
) -> None:
    priced = {"context_tokens": 4096, "prompt_price_per_1k": 0.5, "completion_price_per_1k": 2}
    providers(models={"sandbox-extractive-1": priced})
    async with ai_stack() as client:
        first = await run(client, {"prompt": TEXT})
        await run(client, {"prompt": TEXT})  # a cache hit: counted, free
        response = await client.get("/v1/ai/usage", headers=auth())
        other_tenant = await client.get("/v1/ai/usage", headers=auth("globex"))
    usage = first["result"]["usage"]
    expected = (usage["prompt_tokens"] * 0.5 + usage["completion_tokens"] * 2) / 1000
    assert first["result"]["cost"] == pytest.approx(expected)
    assert response.status_code == 200
    body = response.json()
    assert body["items"] == [
        {
            "provider": "sandbox",
            "model": "sandbox-extractive-1",
            "requests": 2,
            "cached_requests": 1,
            "prompt_tokens": usage["prompt_tokens"],
            "completion_tokens": usage["completion_tokens"],
            "total_tokens": usage["total_tokens"],
            "cost": pytest.approx(expected),
        }
    ]
    assert body["totals"]["requests"] == 2
    assert other_tenant.json()["items"] == []


async def test_prompts_and_completions_stay_out_of_the_logs(
    providers: Configure, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("arq").setLevel(logging.WARNING)  # as setup_logging does in production
    secret_prompt = "Zanzibar quartz vendors meet at dawn. They trade quietly. Nobody knows."
    with structlog.testing.capture_logs() as events:
        async with ai_stack() as client:
            job = await run(client, {"prompt": secret_prompt})
    completion = job["result"]["text"]
    assert "Zanzibar" in completion
    calls = [e for e in events if e.get("event") == "ai call"]
    assert len(calls) == 1
    assert calls[0]["tok_out"] == job["result"]["usage"]["completion_tokens"]
    assert calls[0]["prompt_chars"] == len(secret_prompt)
    logged = repr(events) + caplog.text
    assert "Zanzibar" not in logged
    assert completion not in logged


async def test_content_logging_can_be_enabled(
    providers: Configure, monkeypatch: pytest.MonkeyPatch
) -> None:
    with structlog.testing.capture_logs() as events:
        async with ai_stack(ai_log_content=True) as client:
            job = await run(client, {"prompt": TEXT})
    call = next(e for e in events if e.get("event") == "ai call")
    assert call["completion"] == job["result"]["text"]
    assert "harbour" in call["prompt"]
