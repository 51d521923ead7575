"""POST /v1/jobs:batch: up to 1,000 jobs, validated together, enqueued in one go."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.helpers import auth, gateway_client, running_worker, wait_for_status


def echo(i: int, **extra: Any) -> dict[str, Any]:
    return {"type": "system.echo", "params": {"message": str(i)}, **extra}


async def test_a_thousand_jobs_in_one_request_all_run(redis: Redis) -> None:
    async with gateway_client() as client, running_worker(worker_concurrency=100):
        response = await client.post(
            "/v1/jobs:batch", json={"jobs": [echo(i) for i in range(1000)]}, headers=auth()
        )
        assert response.status_code == 202, response.text
        body = response.json()
        assert (body["accepted"], body["replayed"], body["rejected"]) == (1000, 0, 0)
        assert [item["index"] for item in body["items"]] == list(range(1000))
        last = await wait_for_status(client, body["items"][-1]["id"], {"succeeded"}, timeout=30)
        assert last["result"]["message"] == "999"
        first = (await client.get(body["items"][0]["links"]["self"], headers=auth())).json()
    assert first["result"]["message"] == "0"


async def test_idempotency_keys_hold_within_and_across_batches(redis: Redis) -> None:
    jobs = [echo(1, idempotency_key="a"), echo(1, idempotency_key="a"), echo(2)]
    async with gateway_client() as client:
        first = (await client.post("/v1/jobs:batch", json={"jobs": jobs}, headers=auth())).json()
        again = (
            await client.post(
                "/v1/jobs:batch",
                json={"jobs": [echo(1, idempotency_key="a"), echo(9, idempotency_key="a")]},
                headers=auth(),
            )
        ).json()
    assert first["items"][0]["id"] == first["items"][1]["id"]
    assert first["items"][1]["replayed"] is True
    assert (first["accepted"], first["replayed"]) == (2, 1)
    assert again["items"][0]["id"] == first["items"][0]["id"]
    assert again["items"][1]["error"]["code"] == "idempotency_conflict"
    assert again["items"][1]["error"]["details"] == {"job_id": first["items"][0]["id"]}
    assert await redis.zcard("tgflow:queue:control") == 2


@pytest.mark.parametrize(
    ("jobs", "field"),
    [
        ([echo(0), {"type": "system.sleep", "params": {"seconds": -1}}], "jobs.1.params.seconds"),
        ([echo(0), {"type": "nope.nothing"}], "type"),
        (
            [echo(0), {"type": "system.echo", "params": {"message": "a\x00b"}}],
            "jobs.1.params.message",
        ),
        ([], "jobs"),
        ([echo(i) for i in range(1001)], "jobs"),
    ],
)
async def test_an_invalid_batch_is_rejected_whole(
    jobs: list[dict[str, Any]], field: str, redis: Redis
) -> None:
    async with gateway_client(max_body_bytes=4_000_000) as client:
        response = await client.post("/v1/jobs:batch", json={"jobs": jobs}, headers=auth())
    assert response.status_code == 422
    fields = [d["field"] for d in response.json()["error"]["details"]]
    assert field in fields
    assert await redis.zcard("tgflow:queue:control") == 0


async def test_a_batch_naming_an_unknown_account_is_refused_with_its_index(redis: Redis) -> None:
    jobs = [echo(0), {"type": "telegram.get_me", "params": {"account_id": str(uuid.uuid4())}}]
    async with gateway_client() as client:
        response = await client.post("/v1/jobs:batch", json={"jobs": jobs}, headers=auth())
    assert response.status_code == 404
    error = response.json()["error"]
    assert (error["code"], error["details"]) == ("account_not_found", {"index": 1})
    assert await redis.zcard("tgflow:queue:control") == 0
