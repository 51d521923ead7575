"""The provider semaphore holds cluster-wide: two real worker processes, one limit."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from services.sandbox.admin_client import SandboxAdmin
from shared import registry
from tests.ai.conftest import Configure, submit
from tests.helpers import Proc, eventually, gateway_client, wait_for_status


@pytest.fixture
def workers() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop()


def _sample(text: str, prefix: str) -> float:
    """Sum the samples of a metric whose line starts with ``prefix`` (labels in order)."""
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def _max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in edges:  # an end sorts before a start at the same instant
        running += step
        peak = max(peak, running)
    return peak


@pytest.mark.slow
async def test_three_slots_across_two_worker_processes(
    providers: Configure,
    model: SandboxAdmin,
    monkeypatch: pytest.MonkeyPatch,
    redis: Any,
    workers: list[Proc],
) -> None:
    providers(concurrency=3)
    monkeypatch.setenv("TGFLOW_AI_SLOT_WAIT_SECONDS", "0.2")  # over the limit: defer soon
    await model.set_ai_latency(300)
    for _ in range(2):
        workers.append(Proc("worker", "--queues", "ai", "--concurrency", "10").start())

    async def both_live() -> bool:
        return len(await registry.live_instances(redis, "worker")) == 2

    try:
        await eventually(both_live, timeout=20, interval=0.1)
        async with gateway_client() as client:
            ids = [
                await submit(client, {"prompt": f"Job {i}. It is slow.", "cache": False})
                for i in range(12)
            ]
            jobs = await asyncio.gather(
                *(wait_for_status(client, i, {"succeeded", "failed"}, timeout=30) for i in ids)
            )
        owners = {await redis.hget(f"tgflow:job:{i}", "worker") for i in ids}
        deferred = 0.0
        async with httpx.AsyncClient() as http:
            for worker in await registry.live_instances(redis, "worker"):
                text = (await http.get(worker["metrics_url"])).text
                deferred += _sample(text, 'tgflow_jobs_deferred_total{code="ai_concurrency_limit"')
    except AssertionError:
        for proc in workers:
            print(proc.output())
        raise
    assert [j["status"] for j in jobs] == ["succeeded"] * 12
    assert all(j["attempts"] == 1 for j in jobs)  # waiting spent no tries
    intervals = []
    for job in jobs:
        start = datetime.fromisoformat(job["result"]["requested_at"])
        intervals.append((start, start + timedelta(milliseconds=job["result"]["latency_ms"])))
    assert _max_overlap(intervals) == 3
    assert len(owners) == 2  # both processes ran calls
    assert deferred > 0  # jobs over the limit went back to the queue
    assert await redis.zcard("tgflow:ai:sem:sandbox") == 0  # every slot was given back
