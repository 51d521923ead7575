"""Completion delivery across real processes: a worker killed mid-POST, a gateway stopped
with streams open."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from tests.e2e.conftest import workers_live
from tests.helpers import Proc, auth, eventually, free_port, read_events, wait_until_serving
from tests.monitor.conftest import serving
from tests.monitor.receivers import Hook

WORKER = {
    "TGFLOW_WEBHOOK_ALLOW_PRIVATE": "true",
    "TGFLOW_WEBHOOK_TIMEOUT": "5",
    "TGFLOW_WEBHOOK_LEASE_SECONDS": "6",
    "TGFLOW_WEBHOOK_POLL_SECONDS": "0.2",
    "TGFLOW_WORKER_DRAIN_SECONDS": "0.3",
    "TGFLOW_LOG_LEVEL": "INFO",
    "TGFLOW_LOG_JSON": "false",
}


async def test_a_worker_killed_mid_post_leaves_the_delivery_to_another(
    spawn: Callable[..., Proc],
) -> None:
    port = free_port()
    spawn("gateway", "--port", str(port), env={"TGFLOW_WEBHOOK_ALLOW_PRIVATE": "true"})
    receiver = Hook()
    receiver.script = [(3.0, 200)]  # the first attempt hangs until its worker is gone
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
        serving(receiver.app()) as base,
    ):
        await wait_until_serving(client)
        doomed = spawn("worker", env=WORKER)
        await workers_live(client, 1)
        response = await client.post(
            "/v1/jobs",
            json={"type": "system.echo", "webhook_url": f"{base}/hook"},
            headers=auth(),
        )
        job_id = response.json()["id"]

        async def posted() -> bool:
            return len(receiver.requests) == 1

        await eventually(posted, timeout=15)
        doomed.signal(signal.SIGKILL)
        await doomed.wait()
        rescuer = spawn("worker", env=WORKER)

        async def delivered() -> dict[str, Any] | None:
            job = (await client.get(f"/v1/jobs/{job_id}", headers=auth())).json()
            hook: dict[str, Any] = job["webhook"]
            return hook if hook["status"] == "delivered" else None

        try:
            state = await eventually(delivered, timeout=20)
        except AssertionError:
            print(rescuer.output())
            raise
    assert state["attempts"] == 2
    assert [h["x-tgflow-attempt"] for h, _ in receiver.requests] == ["1", "2"]
    assert len({h["x-tgflow-delivery"] for h, _ in receiver.requests}) == 1
    assert orjson.loads(receiver.requests[1][1])["job"]["status"] == "succeeded"


async def test_sigterm_ends_open_event_streams_and_the_gateway_exits(
    spawn: Callable[..., Proc],
) -> None:
    port = free_port()
    proc = spawn("gateway", "--port", str(port))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        await wait_until_serving(client)
        job_id = (
            await client.post(
                "/v1/jobs", json={"type": "system.echo", "defer_seconds": 600}, headers=auth()
            )
        ).json()["id"]
        events = []
        async with (
            client.stream("GET", f"/v1/jobs/{job_id}/events", headers=auth()) as stream,
            contextlib.aclosing(read_events(stream)) as reading,
        ):
            async for event in reading:
                if "event" in event:
                    events.append(event["event"])
                    proc.signal(signal.SIGTERM)
                    stopped = time.monotonic()
            # The stream ended by itself: the server closed it.
        ended = time.monotonic() - stopped
    code = await proc.wait(timeout=15)
    assert events == ["queued"]
    assert ended < 5  # not uvicorn's 10 s graceful-shutdown timeout
    assert code in (0, -signal.SIGTERM), proc.output()  # uvicorn re-raises the signal
