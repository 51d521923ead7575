"""Test helpers: in-process gateway and worker, and real OS processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx

from services.gateway.app import create_app
from services.worker.main import serve as serve_worker
from shared.auth import mint_token
from shared.config import DEFAULT_SECRET, GatewaySettings, WorkerSettings
from shared.ids import uuid7
from shared.jobs.envelope import Envelope, utcnow


def token(tenant: str = "acme", scopes: tuple[str, ...] = ("jobs:read", "jobs:write")) -> str:
    return mint_token(DEFAULT_SECRET, tenant, scopes=scopes)


def auth(tenant: str = "acme", **kw: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(tenant, **kw)}"}


@contextlib.asynccontextmanager
async def gateway_client(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The real app in process, lifespan included, behind httpx."""
    app = create_app(GatewaySettings(**overrides))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


@contextlib.asynccontextmanager
async def running_worker(**overrides: Any) -> AsyncIterator[asyncio.Event]:
    """A worker serving in this event loop until the block ends (then drained)."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve_worker(WorkerSettings(**overrides), stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def eventually(
    probe: Callable[[], Awaitable[Any]], *, timeout: float = 10.0, interval: float = 0.02
) -> Any:
    """Poll ``probe`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")


async def wait_for_status(
    client: httpx.AsyncClient, job_id: str, statuses: set[str], tenant: str = "acme", **kw: Any
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        body: dict[str, Any] = (await client.get(f"/v1/jobs/{job_id}", headers=auth(tenant))).json()
        return body if body.get("status") in statuses else None

    result: dict[str, Any] = await eventually(probe, **kw)
    return result


async def add_accounts(
    pg: asyncpg.Connection[Any], rows: list[tuple[str, str | None]], *, at: datetime | None = None
) -> list[uuid.UUID]:
    """Accounts of tenant acme in the given (state, disabled_reason), created at ``at``."""
    await pg.execute(
        "INSERT INTO tenants (id, name) VALUES ('acme', 'acme') ON CONFLICT DO NOTHING"
    )
    ids = [uuid.uuid4() for _ in rows]
    await pg.executemany(
        "INSERT INTO accounts (id, tenant_id, state, disabled_reason, created_at) "
        "VALUES ($1, 'acme', $2, $3, coalesce($4, clock_timestamp()))",
        [(i, s, r, at) for i, (s, r) in zip(ids, rows, strict=True)],
    )
    return ids


def _ephemeral_range() -> range:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(n) for n in f.read().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_port() -> int:
    """A port free now, for a server started later, chosen outside the ephemeral range.

    The kernel's own choice (binding port 0) comes from the range outgoing connections
    use too, so a client connecting meanwhile could take it before the server listens
    (seen as "Address already in use" when ``tgflow up`` started its sandbox).
    """
    ephemeral = _ephemeral_range()
    for _ in range(200):
        port = random.randrange(20_000, 65_000)
        if port in ephemeral:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port outside the ephemeral range")


def echo_envelope(defer: float = 0.0, **fields: Any) -> Envelope:
    """A ``system.echo`` job's envelope, due ``defer`` seconds from now, for tests of the
    job store itself."""
    now = utcnow()
    base: dict[str, Any] = {
        "id": str(uuid7()),
        "type": "system.echo",
        "tenant": "acme",
        "params": {"message": "x"},
        "timeout": 5,
        "created_at": now,
        "run_at": now + timedelta(seconds=defer),
    }
    return Envelope(**{**base, **fields})


class Proc:
    """A tgflow subcommand as a real OS process."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        # A file, not a pipe: a pipe nobody reads fills up and blocks the child.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()

    def start(self) -> Proc:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", *self.args],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        return self

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.args} did not exit within {timeout}s")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


async def wait_until_serving(client: httpx.AsyncClient, path: str = "/healthz") -> None:
    """Poll a freshly started server until ``path`` answers 200."""

    async def up() -> bool:
        try:
            return (await client.get(path)).status_code == 200
        except httpx.TransportError:
            return False

    await eventually(up, timeout=20, interval=0.1)


@contextlib.asynccontextmanager
async def served_gateway(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The real app under uvicorn on a free loopback port (streams need a real server)."""
    from services.gateway.app import end_streams
    from shared.httpserver import bound_port, make_server, wait_started

    app = create_app(GatewaySettings(**overrides))
    server = make_server(app, "127.0.0.1", 0)
    task = asyncio.create_task(server.serve())
    await wait_started(server, task)
    try:
        base = f"http://127.0.0.1:{bound_port(server)}"
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            yield client
    finally:
        end_streams(app)
        server.should_exit = True
        await asyncio.wait_for(task, 30)


async def read_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Parse a text/event-stream body: one dict per event (comments as {"comment": ...})."""
    event: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield {"comment": line[1:].strip()}
        elif not line:
            if event:
                yield event
            event = {}
        else:
            name, _, value = line.partition(":")
            event[name] = value.removeprefix(" ")
    if event:
        yield event
