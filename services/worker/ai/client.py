"""OpenAI-compatible chat completions over one shared httpx client, plain or streamed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from services.worker.ai import errors
from shared.jobs.ai import ProviderSpec

Progress = Callable[[int, int], Awaitable[None]]  # (characters so far, chunks so far)


@dataclass
class ChatAnswer:
    text: str
    finish_reason: str
    prompt_tokens: int | None
    completion_tokens: int | None
    first_chunk_s: float | None = None


def open_http(max_connections: int) -> httpx.AsyncClient:
    """The worker's one client for every provider: pooled, keep-alive connections."""
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    return httpx.AsyncClient(limits=limits, follow_redirects=False)


class ChatClient:
    """Calls ``POST {base_url}/chat/completions`` and maps failures to ``ProviderError``."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def complete(
        self,
        provider: ProviderSpec,
        body: dict[str, Any],
        *,
        stream: bool = False,
        progress: Progress | None = None,
    ) -> ChatAnswer:
        url = provider.base_url.rstrip("/") + "/chat/completions"
        headers = {"content-type": "application/json", "accept": "application/json"}
        key = provider.key()
        if key:
            headers["authorization"] = f"Bearer {key}"
        limits = httpx.Timeout(
            connect=provider.connect_timeout,
            read=provider.read_timeout,
            write=provider.read_timeout,
            pool=provider.connect_timeout,
        )
        try:
            async with asyncio.timeout(provider.total_timeout):
                if stream:
                    payload = orjson.dumps(
                        {**body, "stream": True, "stream_options": {"include_usage": True}}
                    )
                    return await self._stream(provider, url, payload, headers, limits, progress)
                return await self._plain(provider, url, orjson.dumps(body), headers, limits)
        except TimeoutError:
            raise errors.timeout(provider.name, provider.total_timeout) from None
        except httpx.TimeoutException:
            raise errors.timeout(provider.name, provider.read_timeout) from None
        except httpx.TransportError as exc:
            raise errors.unreachable(provider.name, exc) from None

    async def _plain(
        self,
        provider: ProviderSpec,
        url: str,
        payload: bytes,
        headers: dict[str, str],
        limits: httpx.Timeout,
    ) -> ChatAnswer:
        response = await self.http.post(url, content=payload, headers=headers, timeout=limits)
        if response.status_code >= 400:
            raise errors.from_status(
                provider.name, response.status_code, response.content, response.headers
            )
        try:
            data = orjson.loads(response.content)
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            return ChatAnswer(
                text=choice["message"].get("content") or "",
                finish_reason=choice.get("finish_reason") or "unknown",
                prompt_tokens=usage.get("prompt_tokens"),
                completion_tokens=usage.get("completion_tokens"),
            )
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            raise errors.bad_response(provider.name, "not a chat completion") from None

    async def _stream(
        self,
        provider: ProviderSpec,
        url: str,
        payload: bytes,
        headers: dict[str, str],
        limits: httpx.Timeout,
        progress: Progress | None,
    ) -> ChatAnswer:
        headers = {**headers, "accept": "text/event-stream"}
        start = time.perf_counter()
        async with self.http.stream(
            "POST", url, content=payload, headers=headers, timeout=limits
        ) as response:
            if response.status_code >= 400:
                body = await response.aread()
                status = response.status_code
                raise errors.from_status(provider.name, status, body, response.headers)
            reader = _StreamReader(provider.name)
            async for line in response.aiter_lines():
                if reader.feed(line):
                    break
                if reader.first_chunk_s is None and reader.chunks:
                    reader.first_chunk_s = time.perf_counter() - start
                if progress is not None and reader.chunks:
                    await progress(reader.chars, reader.chunks)
        return reader.answer()


class _StreamReader:
    """Folds server-sent chat.completion.chunk events into one answer."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.parts: list[str] = []
        self.chars = 0
        self.chunks = 0
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] = {}
        self.done = False
        self.first_chunk_s: float | None = None

    def feed(self, line: str) -> bool:
        """Take one line; True once the stream says it is complete."""
        if not line.startswith("data:"):
            return False
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return True
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise errors.bad_response(self.provider, "a malformed stream event") from None
        if not isinstance(event, dict):
            raise errors.bad_response(self.provider, "a malformed stream event")
        if "error" in event:
            raise errors.bad_response(self.provider, "an error inside the stream")
        self.usage = event.get("usage") or self.usage
        for choice in event.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                self.parts.append(piece)
                self.chars += len(piece)
                self.chunks += 1
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        return False

    def answer(self) -> ChatAnswer:
        if not self.done and self.finish_reason is None:
            raise errors.bad_response(self.provider, "the stream ended early")
        return ChatAnswer(
            text="".join(self.parts),
            finish_reason=self.finish_reason or "unknown",
            prompt_tokens=self.usage.get("prompt_tokens"),
            completion_tokens=self.usage.get("completion_tokens"),
            first_chunk_s=self.first_chunk_s,
        )
