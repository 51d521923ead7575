"""Real gateway and worker processes on free ports, against the test Postgres and Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.helpers import Proc, eventually, free_port, wait_until_serving


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop()


@pytest.fixture
def spawn(procs: list[Proc]) -> Callable[..., Proc]:
    def start(*args: str, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(*args, env=env).start()
        procs.append(proc)
        return proc

    return start


@pytest.fixture
async def gateway(spawn: Callable[..., Proc]) -> AsyncIterator[tuple[httpx.AsyncClient, Proc]]:
    port = free_port()
    proc = spawn("gateway", "--port", str(port))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        await wait_until_serving(client)
        yield client, proc


async def workers_live(client: httpx.AsyncClient, count: int) -> Any:
    async def probe() -> bool:
        body = (await client.get("/readyz")).json()
        return bool(body["checks"]["workers"].get("count", 0) >= count)

    return await eventually(probe, timeout=20, interval=0.1)
