"""An idle worker starts a submitted job at once: the submit's nudge wakes it, long before
its fallback poll."""

from __future__ import annotations

import asyncio

from tests.helpers import auth, gateway_client, running_worker, wait_for_status


async def test_an_idle_worker_is_woken_by_single_and_batch_submits() -> None:
    async with gateway_client() as client, running_worker(worker_poll_delay=10):
        first = await client.post("/v1/jobs", json={"type": "system.echo"}, headers=auth())
        await wait_for_status(client, first.json()["id"], {"succeeded"}, timeout=20)
        for _ in range(3):
            await asyncio.sleep(0.3)  # the worker is back in its 10 s sleep
            one = await client.post("/v1/jobs", json={"type": "system.echo"}, headers=auth())
            job = await wait_for_status(client, one.json()["id"], {"succeeded"}, timeout=3)
            assert job["started_at"] is not None
        await asyncio.sleep(0.3)
        batch = await client.post(
            "/v1/jobs:batch",
            json={
                "jobs": [{"type": "system.echo", "params": {"message": str(i)}} for i in range(20)]
            },
            headers=auth(),
        )
        assert batch.status_code == 202, batch.text
        for item in batch.json()["items"]:
            await wait_for_status(client, item["id"], {"succeeded"}, timeout=3)
