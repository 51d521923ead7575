"""Bad AI input: 422 at the gateway before anything is queued; auth failures never retry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.sandbox.admin_client import SandboxAdmin
from tests.ai.conftest import Configure, ai_stack, model_requests, run
from tests.helpers import auth, gateway_client


async def _submit(params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with gateway_client() as client:
        response = await client.post(
            "/v1/jobs", json={"type": "ai.complete", "params": params}, headers=auth()
        )
    return response.status_code, response.json()


@pytest.mark.parametrize(
    ("params", "code", "field"),
    [
        ({"prompt": "hi", "provider": "nope"}, "unknown_provider", "params.provider"),
        ({"prompt": "hi", "model": "gpt-17"}, "unknown_model", "params.model"),
        ({"prompt": "word " * 4000}, "prompt_too_long", "params.prompt"),
        (
            {"messages": [{"role": "user", "content": "x" * 20_000}]},
            "prompt_too_long",
            "params.messages",
        ),
        ({"prompt": "hi", "max_tokens": 4090}, "prompt_too_long", "params.max_tokens"),
    ],
)
async def test_catalogue_checks_answer_422_and_queue_nothing(
    providers: Configure,
    model: SandboxAdmin,
    redis: Any,
    params: dict[str, Any],
    code: str,
    field: str,
) -> None:
    status, body = await _submit(params)
    assert status == 422, body
    assert body["error"]["code"] == code
    assert body["error"]["details"][0]["field"] == field
    assert await redis.zcard("tgflow:queue:ai") == 0
    assert await model_requests(model) == 0


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "params"),
        ({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "params"),
        ({"messages": [{"role": "system", "content": "b"}], "system": "x"}, "params"),
        ({"messages": [{"role": "robot", "content": "b"}]}, "params.messages.0.role"),
        ({"prompt": "a", "temperature": 3}, "params.temperature"),
        ({"prompt": "a", "max_tokens": 0}, "params.max_tokens"),
        ({"prompt": "a", "surprise": 1}, "params.surprise"),
    ],
)
async def test_malformed_params_answer_invalid_params(
    providers: Configure, params: dict[str, Any], field: str
) -> None:
    status, body = await _submit(params)
    assert status == 422, body
    assert body["error"]["code"] == "invalid_params"
    assert body["error"]["details"][0]["field"] == field


async def test_the_sandbox_is_the_provider_when_none_is_configured() -> None:
    status, _ = await _submit({"prompt": "hi", "provider": "sandbox"})
    assert status == 202
    status, body = await _submit({"prompt": "hi", "provider": "openai"})
    assert body["error"]["code"] == "unknown_provider"
    assert "sandbox" in body["error"]["message"]


@pytest.fixture
async def refusing_provider() -> AsyncIterator[str]:
    """A loopback HTTP server answering every request 401, as a provider with a bad key."""
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            ),
            0,
        )
        await reader.readexactly(length)
        seen.append(head)
        body = b'{"error": {"message": "Incorrect API key provided.", "type": "auth"}}'
        writer.write(
            b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n"
            + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}/v1"


async def test_provider_auth_failure_fails_at_once(
    providers: Configure, refusing_provider: str
) -> None:
    providers(
        extra=[
            {
                "name": "locked",
                "base_url": refusing_provider,
                "api_key": "sk-wrong",
                "default_model": "m",
            }
        ]
    )
    async with ai_stack() as client:
        job = await run(client, {"prompt": "hello", "provider": "locked"})
    assert job["status"] == "failed"
    assert job["error"]["code"] == "provider_auth"
    assert "Incorrect API key" in job["error"]["message"]
    assert "sk-wrong" not in job["error"]["message"]
    assert job["attempts"] == 1
