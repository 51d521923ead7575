"""The OpenAI-compatible endpoint: shape, determinism, streaming, JSON modes, faults."""

import json
import time

import httpx
import pytest

TEXT = (
    "The harbour closed at noon because of the storm. Fishing boats stayed in the harbour. "
    "Children watched the storm from the old pier. The storm damaged two fishing boats. "
    "By evening the harbour reopened and the boats went out again."
)


def _request(**extra: object) -> dict[str, object]:
    body: dict[str, object] = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Summarize."},
            {"role": "user", "content": TEXT},
        ],
    }
    body.update(extra)
    return body


async def test_completion_shape_and_determinism(admin: httpx.AsyncClient) -> None:
    first = await admin.post("/v1/chat/completions", json=_request())
    second = await admin.post("/v1/chat/completions", json=_request())
    assert first.status_code == 200
    data = first.json()
    assert data["object"] == "chat.completion"
    assert data["model"] == "gpt-4o-mini"
    choice = data["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "stop"
    summary = choice["message"]["content"]
    assert summary == second.json()["choices"][0]["message"]["content"]
    assert data["id"] == second.json()["id"]
    # Extractive: whole sentences of the input, in their original order, fewer of them.
    sentences = [s.strip() + "." for s in TEXT.split(".") if s.strip()]
    picked = [s for s in sentences if s in summary]
    assert 1 <= len(picked) < len(sentences)
    assert " ".join(picked) == summary
    usage = data["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage == second.json()["usage"]


async def test_max_tokens_truncates_with_length_finish(admin: httpx.AsyncClient) -> None:
    data = (await admin.post("/v1/chat/completions", json=_request(max_tokens=3))).json()
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 3


async def test_streaming_matches_the_plain_answer(admin: httpx.AsyncClient) -> None:
    plain = (await admin.post("/v1/chat/completions", json=_request())).json()
    body = _request(stream=True, stream_options={"include_usage": True})
    chunks: list[dict[str, object]] = []
    async with admin.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(
        c["choices"][0]["delta"].get("content", "")  # type: ignore[index]
        for c in chunks
        if c["choices"]
    )
    assert text == plain["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"  # type: ignore[index]
    assert chunks[-1]["usage"] == plain["usage"]


async def test_json_schema_response_is_valid(admin: httpx.AsyncClient) -> None:
    schema = {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 20},
            "sentiment": {"type": "string", "enum": ["neutral", "positive"]},
            "word_count": {"type": "integer", "minimum": 0},
            "score": {"type": "number", "maximum": 1},
            "urgent": {"type": "boolean"},
            "points": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
        },
        "required": ["title", "sentiment", "word_count", "score", "urgent", "points"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "report", "schema": schema}}
    data = (await admin.post("/v1/chat/completions", json=_request(response_format=fmt))).json()
    report = json.loads(data["choices"][0]["message"]["content"])
    assert set(report) == set(schema["required"])  # type: ignore[arg-type]
    assert isinstance(report["title"], str)
    assert len(report["title"]) <= 20
    assert report["sentiment"] == "neutral"
    assert isinstance(report["word_count"], int)
    assert report["word_count"] > 10
    assert report["score"] == 1.0
    assert report["urgent"] is True
    assert 1 <= len(report["points"]) <= 2
    assert all(p in TEXT for p in report["points"])
    obj = {"type": "json_object"}
    data = (await admin.post("/v1/chat/completions", json=_request(response_format=obj))).json()
    assert set(json.loads(data["choices"][0]["message"]["content"])) == {"summary"}


async def test_models_listing(admin: httpx.AsyncClient) -> None:
    listing = (await admin.get("/v1/models")).json()
    assert listing["object"] == "list"
    assert listing["data"][0]["object"] == "model"


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m"},
        {"model": "m", "messages": []},
        {"model": "m", "messages": [{"role": "wizard", "content": "x"}]},
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
    ],
)
async def test_bad_requests_get_openai_errors(
    admin: httpx.AsyncClient, body: dict[str, object]
) -> None:
    response = await admin.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    broken = await admin.post("/v1/chat/completions", content=b"{not json")
    assert broken.status_code == 400


async def test_rate_limit_then_server_error_then_success(admin: httpx.AsyncClient) -> None:
    await admin.post("/admin/ai/faults", json={"kind": "rate_limit", "retry_after": 7})
    await admin.post("/admin/ai/faults", json={"kind": "server_error"})
    limited = await admin.post("/v1/chat/completions", json=_request())
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "7"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    failed = await admin.post("/v1/chat/completions", json=_request())
    assert failed.status_code == 500
    assert failed.json()["error"]["type"] == "server_error"
    assert (await admin.post("/v1/chat/completions", json=_request())).status_code == 200


async def test_timeout_fault_and_latency(admin: httpx.AsyncClient) -> None:
    created = await admin.post("/admin/ai/faults", json={"kind": "timeout", "seconds": 5})
    with pytest.raises(httpx.ReadTimeout):
        await admin.post("/v1/chat/completions", json=_request(), timeout=0.2)
    assert (await admin.delete(f"/admin/ai/faults/{created.json()['id']}")).status_code == 200
    config = await admin.post("/admin/ai/config", json={"latency_ms": 150})
    assert config.json()["latency_ms"] == 150
    started = time.monotonic()
    assert (await admin.post("/v1/chat/completions", json=_request())).status_code == 200
    assert time.monotonic() - started >= 0.15
