"""GET /v1/jobs/{id}/events: Server-Sent Events from a real gateway and a real worker."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from shared.ids import uuid7
from shared.jobs.envelope import Envelope, utcnow
from shared.queue import JobStore
from tests.helpers import (
    auth,
    eventually,
    read_events,
    running_worker,
    served_gateway,
    wait_for_status,
)
from tests.worker.test_runner import flaky_type  # noqa: F401 - a fixture used by name

SLEEP_WITH_PROGRESS = {
    "type": "system.sleep",
    "params": {"seconds": 0.6, "progress_every": 0.2},
}


async def submit(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    response = await client.post("/v1/jobs", json=body, headers=auth())
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


async def follow(
    client: httpx.AsyncClient, job_id: str, *, last_event_id: str | None = None
) -> list[dict[str, Any]]:
    """Every event of the stream until the server ends it."""
    headers = auth()
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    events = []
    async with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for event in read_events(response):
            if "event" in event:
                event["data"] = orjson.loads(event["data"])
                events.append(event)
    return events


async def test_a_job_streams_queued_started_progress_finished_in_order() -> None:
    async with served_gateway() as client:
        job_id = await submit(client, {**SLEEP_WITH_PROGRESS, "defer_seconds": 0.3})
        stream = asyncio.create_task(follow(client, job_id))
        async with running_worker():
            events = await asyncio.wait_for(stream, 20)
    names = [e["event"] for e in events]
    assert names[0] == "queued"
    assert names[1] == "started"
    assert names[-1] == "finished"
    assert set(names[2:-1]) == {"progress"}
    assert len(names[2:-1]) >= 2
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(set(ids))
    assert all(e["data"]["seq"] == int(e["id"]) for e in events)
    assert events[2]["data"]["progress"]["seconds"] == 0.6
    final = events[-1]["data"]
    assert final["status"] == "succeeded"
    assert final["result"]["slept"] >= 0.6
    assert final["finished_at"] is not None


async def test_last_event_id_resumes_without_repeats() -> None:
    async with served_gateway() as client, running_worker():
        job_id = await submit(client, SLEEP_WITH_PROGRESS)
        await wait_for_status(client, job_id, {"running"})
        headers = auth()
        first: list[dict[str, Any]] = []
        async with (
            client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as r,
            contextlib.aclosing(read_events(r)) as stream,
        ):
            async for event in stream:
                if "event" in event:
                    first.append(event)
                    break  # the client drops after one event
        resumed = await follow(client, job_id, last_event_id=first[0]["id"])
    assert all(int(e["id"]) > int(first[0]["id"]) for e in resumed)
    assert resumed[-1]["event"] == "finished"
    ids = [int(e["id"]) for e in resumed]
    assert ids == sorted(set(ids))


async def test_a_finished_job_sends_its_final_event_and_ends() -> None:
    async with served_gateway() as client, running_worker():
        job_id = await submit(client, {"type": "system.echo", "params": {"message": "hi"}})
        job = await wait_for_status(client, job_id, {"succeeded"})
        events = await asyncio.wait_for(follow(client, job_id), 5)
        assert [e["event"] for e in events] == ["finished"]
        assert events[0]["data"]["result"] == {"message": "hi", "data": None}
        seen = events[0]["id"]
        again = await client.get(
            f"/v1/jobs/{job_id}/events", headers={**auth(), "Last-Event-ID": seen}
        )
        assert again.status_code == 204  # EventSource stops reconnecting
        # Not an ASCII number ("²" is a digit to str.isdigit): read as no id at all.
        odd = await client.get(
            f"/v1/jobs/{job_id}/events", headers={**auth(), "Last-Event-ID": b"\xb2"}
        )
        assert odd.status_code == 200
        assert "event: finished" in odd.text
    assert job["status"] == "succeeded"


async def test_a_job_known_only_to_the_archive_still_streams_its_end(redis: Redis) -> None:
    async with served_gateway() as client, running_worker():
        job_id = await submit(client, {"type": "system.echo"})
        await wait_for_status(client, job_id, {"succeeded"})

        async def archived() -> bool:
            page = (await client.get("/v1/jobs?status=succeeded", headers=auth())).json()
            return any(item["id"] == job_id for item in page["items"])

        await eventually(archived)
        await redis.delete(f"tgflow:job:{job_id}")  # as if its live status had expired
        events = await asyncio.wait_for(follow(client, job_id), 5)
    assert [(e["event"], e["data"]["status"]) for e in events] == [("finished", "succeeded")]


async def test_cancelling_a_queued_job_finishes_its_stream() -> None:
    async with served_gateway() as client:
        job_id = await submit(client, {"type": "system.echo", "defer_seconds": 60})
        stream = asyncio.create_task(follow(client, job_id))
        await asyncio.sleep(0.2)
        assert (await client.delete(f"/v1/jobs/{job_id}", headers=auth())).status_code == 200
        events = await asyncio.wait_for(stream, 5)
    assert [e["event"] for e in events] == ["queued", "finished"]
    assert events[-1]["data"]["status"] == "cancelled"
    assert events[-1]["data"]["error"]["code"] == "cancelled"


async def test_other_tenants_and_unknown_jobs_get_404() -> None:
    async with served_gateway() as client:
        job_id = await submit(client, {"type": "system.echo", "defer_seconds": 60})
        other = await client.get(f"/v1/jobs/{job_id}/events", headers=auth("globex"))
        unknown = await client.get(
            "/v1/jobs/00000000-0000-0000-0000-000000000000/events", headers=auth()
        )
        no_scope = await client.get(
            f"/v1/jobs/{job_id}/events", headers=auth(scopes=("jobs:write",))
        )
    assert (other.status_code, other.json()["error"]["code"]) == (404, "job_not_found")
    assert unknown.status_code == 404
    assert no_scope.status_code == 403


async def test_keep_alives_flow_and_a_disconnect_closes_the_subscription(redis: Redis) -> None:
    async with served_gateway(sse_keepalive_seconds=0.2) as client:
        job_id = await submit(client, {"type": "system.echo", "defer_seconds": 60})
        channel = f"tgflow:job-events:{job_id}"
        comments = 0
        async with (
            client.stream("GET", f"/v1/jobs/{job_id}/events", headers=auth()) as r,
            contextlib.aclosing(read_events(r)) as stream,
        ):
            async for event in stream:
                if event.get("comment") == "keep-alive":
                    comments += 1
                    numsub = dict(await redis.pubsub_numsub(channel))
                    assert numsub[channel] == 1
                if comments == 2:
                    break

        async def unsubscribed() -> bool:
            return dict(await redis.pubsub_numsub(channel))[channel] == 0

        await eventually(unsubscribed, timeout=5)
        metrics = (await client.get("/metrics")).text
    assert "tgflow_sse_streams 0.0" in metrics


async def test_streams_beyond_the_limit_get_503() -> None:
    async with served_gateway(sse_max_streams=1) as client:
        job_id = await submit(client, {"type": "system.echo", "defer_seconds": 60})
        async with (
            client.stream("GET", f"/v1/jobs/{job_id}/events", headers=auth()) as first,
            contextlib.aclosing(read_events(first)) as stream,
        ):
            assert first.status_code == 200
            await anext(stream)
            second = await client.get(f"/v1/jobs/{job_id}/events", headers=auth())
            assert second.status_code == 503
            assert second.json()["error"]["code"] == "too_many_streams"
            assert second.headers["Retry-After"] == "5"
        async with asyncio.timeout(10):  # the first stream's slot is given back
            await _freed_slot(client, job_id)


async def _freed_slot(client: httpx.AsyncClient, job_id: str) -> None:
    while True:
        async with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=auth()) as r:
            if r.status_code == 200:
                return
        await asyncio.sleep(0.05)


@pytest.mark.usefixtures("flaky_type")
async def test_a_failed_run_that_will_retry_streams_retrying(redis: Redis, store: JobStore) -> None:
    now = utcnow()
    env = Envelope(
        id=str(uuid7()),
        type="test.flaky",
        tenant="acme",
        params={"fail_times": 1},
        timeout=5,
        created_at=now,
        run_at=now + timedelta(seconds=0.3),
    )
    await store.submit(env)
    async with served_gateway() as client:
        stream = asyncio.create_task(follow(client, env.id))
        async with running_worker(worker_poll_delay=0.05):
            events = await asyncio.wait_for(stream, 20)
    assert [e["event"] for e in events] == ["queued", "started", "retrying", "started", "finished"]
    assert events[2]["data"]["error"]["code"] == "server_error"
    assert events[2]["data"]["attempts"] == 1
    assert events[-1]["data"]["result"] == {"attempt": 2}
