"""Completion webhooks end to end: gateway, a worker and a real HTTP receiver."""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from redis.asyncio import Redis

from tests.helpers import auth, eventually, gateway_client, running_worker, wait_for_status
from tests.monitor.conftest import serving
from tests.monitor.receivers import Hook

GATEWAY = {"webhook_allow_private": True}  # the receiver listens on loopback
WORKER = {
    "webhook_allow_private": True,
    "webhook_backoff_seconds": 0.3,
    "webhook_poll_seconds": 0.1,
    "webhook_timeout": 1.0,
    "webhook_lease_seconds": 3.0,
}


@pytest.fixture
async def hook() -> AsyncIterator[tuple[Hook, str]]:
    receiver = Hook()
    async with serving(receiver.app()) as base:
        yield receiver, f"{base}/hook"


async def submit(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    response = await client.post("/v1/jobs", json=body, headers=auth())
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


async def requests_received(receiver: Hook, count: int, timeout: float = 10) -> None:
    async def enough() -> bool:
        return len(receiver.requests) >= count

    await eventually(enough, timeout=timeout)


async def webhook_of(client: httpx.AsyncClient, job_id: str, status: str) -> dict[str, Any]:
    async def settled() -> dict[str, Any] | None:
        job = (await client.get(f"/v1/jobs/{job_id}", headers=auth())).json()
        hook: dict[str, Any] | None = job.get("webhook")
        return hook if hook and hook["status"] == status else None

    result: dict[str, Any] = await eventually(settled)
    return result


def verify(key: str, headers: dict[str, str], body: bytes, tolerance: float = 300) -> bool:
    """What a receiver does (docs/delivery.md): recompute the signature, check freshness."""
    timestamp = headers["x-tgflow-timestamp"]
    expected = hmac.new(key.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    given = headers["x-tgflow-signature"].removeprefix("sha256=")
    fresh = abs(time.time() - int(timestamp)) <= tolerance
    return fresh and hmac.compare_digest(expected.hexdigest(), given)


async def test_a_finished_job_posts_a_signed_webhook(
    hook: tuple[Hook, str], pg: asyncpg.Connection[Any]
) -> None:
    receiver, url = hook
    async with gateway_client(**GATEWAY) as client, running_worker(**WORKER):
        job_id = await submit(
            client, {"type": "system.echo", "params": {"message": "done"}, "webhook_url": url}
        )
        waiting = (await client.get(f"/v1/jobs/{job_id}", headers=auth())).json()["webhook"]
        await requests_received(receiver, 1)
        state = await webhook_of(client, job_id, "delivered")
        key = (await client.get("/v1/webhooks/signing-key", headers=auth())).json()["key"]
        other_key = (await client.get("/v1/webhooks/signing-key", headers=auth("globex"))).json()
    assert waiting["status"] in ("waiting", "pending", "delivered")
    headers, body = receiver.requests[0]
    assert verify(key, headers, body)
    assert not verify(other_key["key"], headers, body)
    assert headers["content-type"] == "application/json"
    assert headers["x-tgflow-event"] == "job.finished"
    assert headers["x-tgflow-attempt"] == "1"
    payload = orjson.loads(body)
    assert payload["id"] == headers["x-tgflow-delivery"] == state["delivery_id"]
    assert payload["event"] == "job.finished"
    job = payload["job"]
    assert (job["id"], job["status"], job["result"]) == (
        job_id,
        "succeeded",
        {"message": "done", "data": None},
    )
    assert not {"tenant", "queue", "seq", "webhook_url"} & set(job)
    assert state["url"] == url
    assert (state["attempts"], state["last_status_code"], state["last_error"]) == (1, 200, None)
    assert state["delivered_at"] is not None
    row = await eventually(
        lambda: pg.fetchrow("SELECT * FROM webhook_deliveries WHERE job_id = $1", uuid.UUID(job_id))
    )
    assert (row["status"], row["attempts"], str(row["delivery_id"])) == (
        "delivered",
        1,
        state["delivery_id"],
    )


async def test_a_failing_receiver_is_retried_with_growing_delays(hook: tuple[Hook, str]) -> None:
    receiver, url = hook
    receiver.script = [(0.0, 500), (0.0, 503)]  # then 200
    async with gateway_client(**GATEWAY) as client, running_worker(**WORKER):
        job_id = await submit(client, {"type": "system.echo", "webhook_url": url})
        await requests_received(receiver, 3)
        state = await webhook_of(client, job_id, "delivered")
    assert [h["x-tgflow-attempt"] for h, _ in receiver.requests] == ["1", "2", "3"]
    assert len({h["x-tgflow-delivery"] for h, _ in receiver.requests}) == 1
    assert len({body for _, body in receiver.requests}) == 1  # the same event every time
    first_gap = receiver.times[1] - receiver.times[0]
    second_gap = receiver.times[2] - receiver.times[1]
    base = WORKER["webhook_backoff_seconds"]
    # Attempt n waits within [c/2, c] for c = base * 2^(n-1): the floors grow.
    assert base / 2 <= first_gap <= base + 0.5
    assert base <= second_gap <= 2 * base + 0.5
    assert state["attempts"] == 3
    assert state["last_status_code"] == 200


async def test_a_delivery_gives_up_after_its_attempts_and_the_job_shows_it(
    hook: tuple[Hook, str], redis: Redis
) -> None:
    receiver, url = hook
    receiver.script = [(0.0, 500)] * 10
    async with (
        gateway_client(**GATEWAY) as client,
        running_worker(**{**WORKER, "webhook_max_attempts": 3, "webhook_backoff_seconds": 0.05}),
    ):
        job_id = await submit(client, {"type": "system.echo", "webhook_url": url})
        state = await webhook_of(client, job_id, "failed")
        assert (state["attempts"], state["last_status_code"]) == (3, 500)
        assert state["last_error"].startswith("HTTP 500")
        assert state["next_attempt_at"] is None
        assert await redis.zcard("tgflow:webhooks:due") == 0
        await eventually(lambda: _archived(client, job_id))
        # Once Redis has let the job and its delivery go, the archive still shows it.
        await redis.delete(f"tgflow:job:{job_id}", f"tgflow:webhook:{job_id}")
        archived = (await client.get(f"/v1/jobs/{job_id}", headers=auth())).json()
    assert len(receiver.requests) == 3
    assert archived["webhook"]["status"] == "failed"
    assert archived["webhook"]["attempts"] == 3
    assert archived["webhook"]["delivery_id"] == state["delivery_id"]


async def _archived(client: httpx.AsyncClient, job_id: str) -> bool:
    page = (await client.get("/v1/jobs?status=succeeded", headers=auth())).json()
    return any(item["id"] == job_id for item in page["items"])


async def test_a_receiver_that_times_out_gets_another_attempt(hook: tuple[Hook, str]) -> None:
    receiver, url = hook
    receiver.script = [(2.0, 200)]  # answers after the worker stopped waiting
    async with gateway_client(**GATEWAY) as client, running_worker(**WORKER):
        job_id = await submit(client, {"type": "system.echo", "webhook_url": url})
        state = await webhook_of(client, job_id, "delivered")
    assert state["attempts"] == 2
    assert len(receiver.requests) == 2


async def test_cancelling_a_queued_job_schedules_its_webhook_at_once(
    hook: tuple[Hook, str], redis: Redis
) -> None:
    receiver, url = hook
    async with gateway_client(**GATEWAY) as client:
        job_id = await submit(
            client, {"type": "system.echo", "defer_seconds": 60, "webhook_url": url}
        )
        cancelled = await client.delete(f"/v1/jobs/{job_id}", headers=auth())
        assert cancelled.status_code == 200
        # Scheduled by the cancel itself: no worker has seen the job.
        assert await redis.zscore("tgflow:webhooks:due", job_id) is not None
        pending = cancelled.json()["webhook"]
        assert (pending["status"], pending["attempts"]) == ("pending", 0)
        async with running_worker(**WORKER):
            await webhook_of(client, job_id, "delivered")
    job = orjson.loads(receiver.requests[0][1])["job"]
    assert (job["status"], job["error"]["code"]) == ("cancelled", "cancelled")


async def test_failed_jobs_deliver_too(hook: tuple[Hook, str]) -> None:
    receiver, url = hook
    async with gateway_client(**GATEWAY) as client, running_worker(**WORKER):
        job_id = await submit(
            client,
            {
                "type": "system.sleep",
                "params": {"seconds": 5},
                "timeout_seconds": 0.1,
                "webhook_url": url,
            },
        )
        await wait_for_status(client, job_id, {"failed"})
        await webhook_of(client, job_id, "delivered")
    job = orjson.loads(receiver.requests[0][1])["job"]
    assert (job["status"], job["error"]["code"]) == ("failed", "timeout")


async def test_a_job_without_a_webhook_shows_none() -> None:
    async with gateway_client() as client, running_worker():
        job_id = await submit(client, {"type": "system.echo"})
        job = await wait_for_status(client, job_id, {"succeeded"})
    assert job["webhook"] is None


LONG = "https://example.com/" + "a" * 2048


@pytest.mark.parametrize(
    ("url", "allow_private"),
    [
        ("ftp://example.com/hook", True),
        ("example.com/hook", True),
        ("https://", True),
        ("https://exa mple.com/", True),
        ("https://example.com:99999/", True),
        (LONG, True),
        ("", True),
        ("http://127.0.0.1:8000/hook", False),
        ("http://localhost/hook", False),
        ("http://[::1]/hook", False),
        ("http://10.1.2.3/hook", False),
        ("http://169.254.169.254/latest/meta-data", False),
    ],
)
async def test_invalid_webhook_urls_are_422(url: str, allow_private: bool, redis: Redis) -> None:
    body = {"type": "system.echo", "webhook_url": url}
    async with gateway_client(webhook_allow_private=allow_private) as client:
        single = await client.post("/v1/jobs", json=body, headers=auth())
        batch = await client.post(
            "/v1/jobs:batch", json={"jobs": [{"type": "system.echo"}, body]}, headers=auth()
        )
    for response, field in ((single, "webhook_url"), (batch, "jobs.1.webhook_url")):
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_webhook_url"
        assert error["details"][0]["field"] == field
    assert await redis.zcard("tgflow:queue:control") == 0


async def test_a_batch_carries_each_jobs_webhook(hook: tuple[Hook, str]) -> None:
    receiver, url = hook
    jobs = [
        {"type": "system.echo", "params": {"message": str(i)}, "webhook_url": url} for i in range(3)
    ]
    jobs.append({"type": "system.echo"})
    async with gateway_client(**GATEWAY) as client, running_worker(**WORKER):
        response = await client.post("/v1/jobs:batch", json={"jobs": jobs}, headers=auth())
        assert response.status_code == 202
        await requests_received(receiver, 3)
    delivered = sorted(
        orjson.loads(body)["job"]["params"]["message"] for _, body in receiver.requests
    )
    assert delivered == ["0", "1", "2"]


async def test_the_cli_prints_the_same_signing_key(capsys: pytest.CaptureFixture[str]) -> None:
    from services.cli.main import main

    assert main(["webhook-key", "--tenant", "acme"]) == 0
    printed = capsys.readouterr().out.strip()
    async with gateway_client() as client:
        served = (await client.get("/v1/webhooks/signing-key", headers=auth())).json()
        reader = await client.get("/v1/webhooks/signing-key", headers=auth(scopes=("jobs:read",)))
    assert served == {"tenant": "acme", "algorithm": "hmac-sha256", "key": printed}
    assert reader.status_code == 403


async def test_a_configured_webhook_secret_changes_every_key() -> None:
    async with gateway_client() as default, gateway_client(webhook_secret="s3cret-xyz") as custom:
        first = (await default.get("/v1/webhooks/signing-key", headers=auth())).json()["key"]
        second = (await custom.get("/v1/webhooks/signing-key", headers=auth())).json()["key"]
    assert first != second
