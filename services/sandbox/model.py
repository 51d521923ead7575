"""A local OpenAI-compatible chat completions endpoint with a deterministic model."""

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .textmodel import SchemaFiller, count_tokens, summarize, truncate_tokens

MODEL_ID = "sandbox-extractive-1"
AiFaultKind = Literal["rate_limit", "server_error", "timeout"]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=8)
    response_format: dict[str, Any] | None = None


@dataclass
class AiFault:
    id: int
    kind: AiFaultKind
    times: int | None = 1
    retry_after: int = 1
    seconds: float = 30.0
    fired: int = 0


@dataclass
class ModelEndpoint:
    """Latency, faults and counters of the model endpoint."""

    latency: float = 0.0
    faults: dict[int, AiFault] = field(default_factory=dict)
    requests: int = 0
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    _next: int = 0

    def add_fault(self, kind: AiFaultKind, **options: Any) -> AiFault:
        self._next += 1
        fault = AiFault(self._next, kind, **options)
        self.faults[fault.id] = fault
        return fault

    def take_fault(self) -> AiFault | None:
        for fault in self.faults.values():
            if fault.times is None or fault.fired < fault.times:
                fault.fired += 1
                return fault
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "latency_ms": int(self.latency * 1000),
            "requests": self.requests,
            "faults": [asdict(f) for f in self.faults.values()],
        }

    def reset(self) -> None:
        self.latency = 0.0
        self.faults.clear()
        self.requests = 0


def openai_error(
    status: int,
    message: str,
    kind: str,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _output(req: ChatRequest) -> str:
    source = "\n".join(m.text() for m in req.messages if m.role == "user")
    fmt = (req.response_format or {}).get("type", "text")
    if fmt == "json_object":
        return json.dumps({"summary": summarize(source)}, ensure_ascii=False)
    if fmt == "json_schema":
        spec = (req.response_format or {}).get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        schema = schema if isinstance(schema, dict) else {"type": "object", "properties": {}}
        return json.dumps(SchemaFiller(source, schema).fill(schema), ensure_ascii=False)
    return summarize(source) or "(empty input)"


def _usage(req: ChatRequest, completion: str) -> dict[str, int]:
    # Per message: role + content tokens + 3 framing tokens; 3 to prime the reply.
    prompt = sum(count_tokens(m.role) + count_tokens(m.text()) + 3 for m in req.messages) + 3
    completion_tokens = count_tokens(completion) * req.n
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }


def _completion_id(raw: bytes) -> str:
    return "chatcmpl-" + hashlib.sha256(raw).hexdigest()[:29]


def _answer(req: ChatRequest) -> tuple[str, str]:
    text = _output(req)
    limit = req.max_completion_tokens or req.max_tokens
    json_mode = (req.response_format or {}).get("type") in ("json_object", "json_schema")
    if limit is None or json_mode:
        return text, "stop"
    cut, truncated = truncate_tokens(text, limit)
    return cut, "length" if truncated else "stop"


def _completion(req: ChatRequest, raw: bytes) -> dict[str, Any]:
    text, finish = _answer(req)
    return {
        "id": _completion_id(raw),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.model,
        "system_fingerprint": "fp_sandbox",
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
            for i in range(req.n)
        ],
        "usage": _usage(req, text),
    }


def _chunk(base: dict[str, Any], choices: list[dict[str, Any]], **extra: Any) -> str:
    return "data: " + json.dumps({**base, "choices": choices, **extra}) + "\n\n"


async def _stream(req: ChatRequest, raw: bytes) -> AsyncIterator[str]:
    text, finish = _answer(req)
    base = {
        "id": _completion_id(raw),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": req.model,
        "system_fingerprint": "fp_sandbox",
    }
    first = [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
    yield _chunk(base, first)
    words = text.split(" ")
    for start in range(0, len(words), 4):
        piece = " ".join(words[start : start + 4]) + (" " if start + 4 < len(words) else "")
        yield _chunk(base, [{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
        await asyncio.sleep(0)
    yield _chunk(base, [{"index": 0, "delta": {}, "finish_reason": finish}])
    if req.stream_options and req.stream_options.include_usage:
        yield _chunk(base, [], usage=_usage(req, text))
    yield "data: [DONE]\n\n"


async def _fault_response(fault: AiFault, closing: asyncio.Event) -> Response | None:
    if fault.kind == "rate_limit":
        return openai_error(
            429,
            "Rate limit reached (sandbox fault injection).",
            "requests",
            "rate_limit_exceeded",
            headers={"Retry-After": str(fault.retry_after)},
        )
    if fault.kind == "server_error":
        return openai_error(500, "The server had an error (sandbox).", "server_error")
    # A hung upstream: answer late, or not at all if the sandbox is stopping.
    try:
        await asyncio.wait_for(closing.wait(), fault.seconds)
    except TimeoutError:
        return None
    return openai_error(503, "Sandbox shutting down.", "server_error")


def model_routes(endpoint: ModelEndpoint) -> list[Route]:
    """The /v1 routes served next to the admin API."""

    async def chat_completions(request: Request) -> Response:
        raw = await request.body()
        try:
            req = ChatRequest.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first.get("loc", ()))
            return openai_error(400, f"{where}: {first['msg']}", "invalid_request_error")
        endpoint.requests += 1
        if endpoint.latency:
            await asyncio.sleep(endpoint.latency)
        fault = endpoint.take_fault()
        if fault is not None:
            failure = await _fault_response(fault, endpoint.closing)
            if failure is not None:
                return failure
        if req.stream:
            return StreamingResponse(_stream(req, raw), media_type="text/event-stream")
        return JSONResponse(_completion(req, raw))

    def model_card(model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": 0, "owned_by": "sandbox"}

    async def list_models(_request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_card(MODEL_ID)]})

    async def get_model(request: Request) -> Response:
        return JSONResponse(model_card(request.path_params["model"]))

    return [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
    ]
