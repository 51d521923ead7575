"""Real receivers for notification tests: an HTTP endpoint and a small SMTP server."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass
class Hook:
    """An HTTP receiver that records every request; ``script`` sets what each answers."""

    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    script: list[tuple[float, int]] = field(default_factory=list)  # (delay, status) per call
    times: list[float] = field(default_factory=list)  # time.monotonic() of each arrival

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [orjson.loads(body) for _, body in self.requests]

    def app(self) -> Starlette:
        async def receive(request: Request) -> Response:
            body = await request.body()
            self.times.append(time.monotonic())
            self.requests.append((dict(request.headers), body))
            delay, status = self.script.pop(0) if self.script else (0.0, 200)
            if delay:
                await asyncio.sleep(delay)
            return JSONResponse({"ok": status < 300}, status_code=status)

        return Starlette(routes=[Route("/hook", receive, methods=["POST"])])


class SmtpServer:
    """Enough SMTP (RFC 5321) to accept mail on 127.0.0.1: EHLO/HELO, MAIL, RCPT, DATA."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.server: asyncio.Server | None = None
        self.reject_with: int | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")
            await writer.drain()

        await say("220 test ESMTP")
        envelope: dict[str, Any] = {"rcpt": []}
        while line := (await reader.readline()).decode().rstrip("\r\n"):
            verb = line.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                await say("250 test")
            elif verb == "MAIL":
                envelope["from"] = line.split(":", 1)[1].strip()
                await say("250 ok")
            elif verb == "RCPT":
                envelope["rcpt"].append(line.split(":", 1)[1].strip())
                await say("250 ok")
            elif verb == "DATA":
                if self.reject_with:
                    await say(f"{self.reject_with} no thanks")
                    continue
                await say("354 go on")
                data = []
                while (chunk := await reader.readline()) not in (b".\r\n", b""):
                    data.append(chunk)
                envelope["data"] = b"".join(data).decode()
                self.messages.append(envelope)
                envelope = {"rcpt": []}
                await say("250 queued")
            elif verb == "QUIT":
                await say("221 bye")
                break
            else:
                await say("250 ok")
        writer.close()
