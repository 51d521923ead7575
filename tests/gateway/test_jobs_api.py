"""The job API against a real Redis, Postgres and an in-process worker."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from tests.helpers import (
    add_accounts,
    auth,
    eventually,
    gateway_client,
    running_worker,
    wait_for_status,
)


async def submit(client: Any, body: dict[str, Any], tenant: str = "acme") -> Any:
    return await client.post("/v1/jobs", json=body, headers=auth(tenant))


async def test_echo_runs_and_returns_its_params(pg: asyncpg.Connection[Any]) -> None:
    params = {"message": "hello", "data": {"n": [1, 2, 3]}}
    async with gateway_client() as client, running_worker():
        response = await submit(client, {"type": "system.echo", "params": params})
        assert response.status_code == 202
        accepted = response.json()
        assert accepted["status"] == "queued"
        assert accepted["links"]["self"] == f"/v1/jobs/{accepted['id']}"
        job = await wait_for_status(client, accepted["id"], {"succeeded"})
    assert job["result"] == params
    assert job["attempts"] == 1
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    row = await eventually(
        lambda: pg.fetchrow(
            "SELECT * FROM jobs WHERE id = $1 AND status = 'succeeded'",
            uuid.UUID(accepted["id"]),
        )
    )
    assert row["tenant_id"] == "acme"
    assert row["type"] == "system.echo"
    assert row["trace_id"] == job["trace_id"]


async def test_same_idempotency_key_gives_one_job(redis: Any) -> None:
    body = {"type": "system.echo", "params": {"message": "x"}, "idempotency_key": "k-1"}
    async with gateway_client() as client:
        first = await submit(client, body)
        second = await submit(client, body)
        assert first.status_code == second.status_code == 202
        assert first.json()["id"] == second.json()["id"]
        assert second.headers["Idempotent-Replayed"] == "true"
        other_tenant = await submit(client, body, tenant="globex")
        assert other_tenant.json()["id"] != first.json()["id"]
    assert await redis.zcard("tgflow:queue:control") == 2


async def test_twenty_concurrent_duplicates_give_one_job(redis: Any) -> None:
    body = {"type": "system.echo", "params": {"message": "race"}, "idempotency_key": "same"}
    async with gateway_client() as client:
        responses = await asyncio.gather(*(submit(client, body) for _ in range(20)))
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1
    assert await redis.zcard("tgflow:queue:control") == 1


async def test_idempotency_key_with_other_params_conflicts() -> None:
    async with gateway_client() as client:
        await submit(
            client, {"type": "system.echo", "params": {"message": "a"}, "idempotency_key": "k"}
        )
        response = await submit(
            client, {"type": "system.echo", "params": {"message": "b"}, "idempotency_key": "k"}
        )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_conflict"


async def test_a_replay_is_answered_though_the_account_was_disabled_since(
    pg: asyncpg.Connection[Any],
) -> None:
    """The key is answered first (a replay, or a conflict naming its job); a job that
    is new is still refused for the account."""
    [account] = await add_accounts(pg, [("active", None)])
    params = {"account_id": str(account), "peer": "me", "text": "once"}
    body = {"type": "telegram.send_message", "params": params, "idempotency_key": "k-1"}
    other = {**body, "params": {**params, "text": "twice"}}
    async with gateway_client() as client:
        first = await submit(client, body)
        await pg.execute("UPDATE accounts SET state = 'disabled', disabled_reason = 'banned'")
        again = await submit(client, body)
        conflict = await submit(client, other)
        new = await submit(client, {**body, "idempotency_key": "k-2"})
        batch = await client.post("/v1/jobs:batch", json={"jobs": [body, other]}, headers=auth())
        refused = await client.post(
            "/v1/jobs:batch",
            json={"jobs": [body, {**body, "idempotency_key": "k-3"}]},
            headers=auth(),
        )
    job_id = first.json()["id"]
    assert again.status_code == 202, again.text
    assert again.json()["id"] == job_id
    assert again.headers["Idempotent-Replayed"] == "true"
    assert conflict.status_code == 409
    assert conflict.json()["error"]["details"] == {"job_id": job_id}
    assert new.json()["error"]["code"] == "account_not_active"
    items = batch.json()["items"]
    assert (items[0]["id"], items[0]["replayed"]) == (job_id, True)
    assert items[1]["error"]["code"] == "idempotency_conflict"
    assert items[1]["error"]["details"] == {"job_id": job_id}
    assert refused.status_code == 409
    assert refused.json()["error"]["details"]["index"] == 1


async def test_other_tenants_jobs_are_invisible() -> None:
    async with gateway_client() as client:
        job_id = (await submit(client, {"type": "system.echo"})).json()["id"]
        for call in (client.get, client.delete):
            response = await call(f"/v1/jobs/{job_id}", headers=auth("globex"))
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "job_not_found"
        listing = await client.get("/v1/jobs", headers=auth("globex"))
        assert listing.json()["items"] == []


async def test_list_filters_and_paginates_newest_first() -> None:
    async with gateway_client() as client, running_worker():
        ids = []
        for i in range(5):
            ids.append(
                (
                    await submit(client, {"type": "system.echo", "params": {"message": str(i)}})
                ).json()["id"]
            )
        deferred = (
            await submit(
                client, {"type": "system.sleep", "params": {"seconds": 1}, "defer_seconds": 60}
            )
        ).json()["id"]
        for job_id in ids:
            await wait_for_status(client, job_id, {"succeeded"})

        async def archived() -> bool:
            page = (await client.get("/v1/jobs?limit=50", headers=auth())).json()
            return len(page["items"]) == 6

        await eventually(archived)
        seen: list[str] = []
        cursor = None
        while True:
            url = "/v1/jobs?limit=2&type=system.echo" + (f"&cursor={cursor}" if cursor else "")
            page = (await client.get(url, headers=auth())).json()
            seen += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert seen == list(reversed(ids))
        queued = (await client.get("/v1/jobs?status=queued", headers=auth())).json()
        assert [item["id"] for item in queued["items"]] == [deferred]


async def test_a_status_filter_holds_even_where_the_archive_lags(
    pg: asyncpg.Connection[Any],
) -> None:
    """The list reads the archive and shows unfinished jobs as Redis has them now; a job
    the archive still calls queued but that has finished is not listed as queued."""
    async with gateway_client() as client, running_worker():
        job_id = (await submit(client, {"type": "system.echo"})).json()["id"]
        await wait_for_status(client, job_id, {"succeeded"})
        await eventually(
            lambda: pg.fetchval("SELECT status = 'succeeded' FROM jobs WHERE id = $1", job_id)
        )
        # As if the archiver had not yet copied the job's later changes.
        await pg.execute("UPDATE jobs SET status = 'queued', seq = 1 WHERE id = $1", job_id)
        queued = (await client.get("/v1/jobs?status=queued", headers=auth())).json()
        everything = (await client.get("/v1/jobs", headers=auth())).json()
    assert queued["items"] == []
    assert [(j["id"], j["status"]) for j in everything["items"]] == [(job_id, "succeeded")]


async def test_cancel_queued_job_never_runs(redis: Any) -> None:
    async with gateway_client() as client:
        job_id = (await submit(client, {"type": "system.echo", "defer_seconds": 30})).json()["id"]
        response = await client.delete(f"/v1/jobs/{job_id}", headers=auth())
        assert response.status_code == 200
        assert response.json()["status"] == "cancelled"
        assert await redis.zcard("tgflow:queue:control") == 0
        again = await client.delete(f"/v1/jobs/{job_id}", headers=auth())
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "job_finished"


async def test_cancel_running_sleep_stops_it_promptly() -> None:
    async with gateway_client() as client, running_worker():
        job_id = (await submit(client, {"type": "system.sleep", "params": {"seconds": 30}})).json()[
            "id"
        ]
        await wait_for_status(client, job_id, {"running"})
        response = await client.delete(f"/v1/jobs/{job_id}", headers=auth())
        assert response.status_code == 202
        assert response.json()["cancel_requested"] is True
        job = await wait_for_status(client, job_id, {"cancelled"}, timeout=3)
    assert job["error"]["code"] == "cancelled"
    assert job["finished_at"] is not None


async def test_timeout_fails_the_job_with_code_timeout() -> None:
    async with gateway_client() as client, running_worker():
        job_id = (
            await submit(
                client, {"type": "system.sleep", "params": {"seconds": 5}, "timeout_seconds": 0.2}
            )
        ).json()["id"]
        job = await wait_for_status(client, job_id, {"failed"}, timeout=5)
    assert job["error"]["code"] == "timeout"


async def test_deferred_job_waits_until_due() -> None:
    async with gateway_client() as client, running_worker(worker_poll_delay=0.05):
        job_id = (await submit(client, {"type": "system.echo", "defer_seconds": 0.5})).json()["id"]
        await asyncio.sleep(0.2)
        early = (await client.get(f"/v1/jobs/{job_id}", headers=auth())).json()
        assert early["status"] == "queued"
        job = await wait_for_status(client, job_id, {"succeeded"}, timeout=5)
    started = datetime.fromisoformat(job["started_at"])
    due = datetime.fromisoformat(job["run_at"])
    assert started >= due
    assert started - datetime.fromisoformat(job["created_at"]) >= timedelta(seconds=0.5)


async def test_job_types_catalogue_lists_schemas() -> None:
    async with gateway_client() as client:
        body = (await client.get("/v1/job-types", headers=auth())).json()
        openapi = (await client.get("/openapi.json")).json()
    names = {t["name"] for t in body}
    assert {"system.echo", "system.sleep"} <= names
    sleep = next(t for t in body if t["name"] == "system.sleep")
    assert "seconds" in sleep["params_schema"]["properties"]
    schemas = openapi["components"]["schemas"]
    assert "Submit_system_sleep" in schemas
    assert "Submit_system_echo" in schemas
