"""The dead-letter API: listing, retry of one job, bulk requeue, against real services."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import orjson
from prometheus_client import REGISTRY as METRICS
from redis.asyncio import Redis

from shared.queue import DEAD_LETTER_PLACEHOLDER, DEAD_LETTERS, JobStore, job_key
from tests import breakable
from tests.helpers import auth, eventually, gateway_client, running_worker, wait_for_status


def requeued_metric(how: str) -> float:
    labels = {"type": breakable.NAME, "how": how}
    return METRICS.get_sample_value("tgflow_dead_letters_requeued_total", labels) or 0.0


async def dead_letters(
    client: httpx.AsyncClient, tenant: str = "acme", **query: Any
) -> list[dict[str, Any]]:
    """Every page of GET /v1/dead-letters, in order."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {**query, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/v1/dead-letters", params=params, headers=auth(tenant))
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


async def failed_in_store(store: JobStore, count: int, **kw: Any) -> list[str]:
    code = kw.pop("code", "server_error")
    ids = [await breakable.submit(store, **kw) for _ in range(count)]
    for job_id in ids:
        await breakable.fail_in_store(store, job_id, code)
    return ids


async def test_listing_pages_newest_first_with_filters(store: JobStore, redis: Redis) -> None:
    broken = await failed_in_store(store, 5)
    echoes = await failed_in_store(store, 2, job_type="system.echo", code="bad_peer")
    theirs = await failed_in_store(store, 2, tenant="globex")
    await breakable.archive_all(redis)
    newest_first = [*reversed(broken + echoes)]
    async with gateway_client() as client:
        first = (await client.get("/v1/dead-letters?limit=3", headers=auth())).json()
        assert len(first["items"]) == 3
        assert first["next_cursor"]
        items = await dead_letters(client, limit=3)
        assert [i["id"] for i in items] == newest_first
        dead_ats = [datetime.fromisoformat(i["dead_at"]) for i in items]
        assert dead_ats == sorted(dead_ats, reverse=True)
        assert all(i["status"] == "failed" for i in items)
        assert all(len(i["history"]) == 1 and i["history"][0]["final"] for i in items)
        assert items[0]["links"]["self"] == f"/v1/jobs/{echoes[-1]}"

        only_echo = await dead_letters(client, type="system.echo")
        assert [i["id"] for i in only_echo] == echoes[::-1]
        by_code = await dead_letters(client, error_code="server_error", limit=2)
        assert [i["id"] for i in by_code] == broken[::-1]
        middle = {i["id"]: i["dead_at"] for i in items}
        window = await dead_letters(client, since=middle[broken[1]], until=middle[broken[4]])
        assert [i["id"] for i in window] == [broken[3], broken[2], broken[1]]
        assert await dead_letters(client, type="system.echo", error_code="server_error") == []

        assert {i["id"] for i in await dead_letters(client, "globex")} == set(theirs)
        other = await client.get(f"/v1/jobs/{broken[0]}", headers=auth("globex"))
        assert other.status_code == 404


async def test_a_just_failed_job_is_listed_before_the_archive_has_it(
    switch: breakable.Switch, store: JobStore, redis: Redis
) -> None:
    archived = await failed_in_store(store, 3)
    await breakable.archive_all(redis)
    fresh = await failed_in_store(store, 2)  # in Redis only: the archiver is behind
    async with gateway_client() as client:
        items = await dead_letters(client, limit=2)
        assert [i["id"] for i in items] == [*reversed(archived + fresh)]
        assert await dead_letters(client, "globex") == []

        # Requeued just now: the archive still says dead, the listing knows better.
        response = await client.post(f"/v1/jobs/{archived[1]}/retry", headers=auth())
        assert response.status_code == 202
        expected = [fresh[1], fresh[0], archived[2], archived[0]]
        assert [i["id"] for i in await dead_letters(client, limit=2)] == expected
        await breakable.archive_all(redis)
        assert [i["id"] for i in await dead_letters(client, limit=3)] == expected


async def test_retry_runs_a_failed_job_again_with_fresh_tries(
    switch: breakable.Switch, store: JobStore, redis: Redis, pg: asyncpg.Connection[Any]
) -> None:
    before = requeued_metric("single")
    job_id = await breakable.submit(store)
    async with gateway_client() as client, running_worker(worker_poll_delay=0.05):
        await wait_for_status(client, job_id, {"failed"})
        response = await client.post(f"/v1/jobs/{job_id}/retry", headers=auth())
        assert response.status_code == 202
        queued = response.json()
        assert queued["id"] == job_id
        assert queued["requeued"] == 1
        assert queued["dead_at"] is None
        assert len(queued["history"]) == 3

        # Still broken: three more tries, then dead again, the history spanning both rounds.
        again = await wait_for_status(client, job_id, {"failed"})
        assert [(h["attempt"], h["requeue"]) for h in again["history"]] == [
            (1, 0),
            (2, 0),
            (3, 0),
            (1, 1),
            (2, 1),
            (3, 1),
        ]
        last_round = datetime.fromisoformat(again["history"][2]["at"])
        assert datetime.fromisoformat(again["dead_at"]) > last_round

        switch.mended = True
        assert (await client.post(f"/v1/jobs/{job_id}/retry", headers=auth())).status_code == 202
        done = await wait_for_status(client, job_id, {"succeeded"})
        assert await dead_letters(client) == []
    assert done["result"] == {"attempt": 1}
    assert done["attempts"] == 1
    assert done["requeued"] == 2
    assert len(done["history"]) == 6
    assert done["error"] is None
    assert done["dead_at"] is None
    assert [attempt for _, attempt in switch.runs] == [1, 2, 3, 1, 2, 3, 1]
    assert requeued_metric("single") == before + 2
    assert await redis.zscore(DEAD_LETTERS, job_id) is None
    assert await redis.zrange(DEAD_LETTERS, 0, -1) == [DEAD_LETTER_PLACEHOLDER]
    row = await eventually(
        lambda: pg.fetchrow(
            "SELECT * FROM jobs WHERE id = $1 AND status = 'succeeded'", uuid.UUID(job_id)
        )
    )
    assert row["requeued"] == 2
    assert row["dead_at"] is None
    assert len(orjson.loads(row["history"])) == 6


async def test_retry_rebuilds_an_expired_job_from_the_archive(
    switch: breakable.Switch, store: JobStore, redis: Redis, pg: asyncpg.Connection[Any]
) -> None:
    job_id = await breakable.submit(store, params={"fail": "permanent", "code": "bad_peer"})
    async with gateway_client() as client, running_worker(worker_poll_delay=0.05):
        await wait_for_status(client, job_id, {"failed"})
        row = await eventually(
            lambda: pg.fetchrow(
                "SELECT seq FROM jobs WHERE id = $1 AND dead_at IS NOT NULL", uuid.UUID(job_id)
            )
        )
        await redis.delete(job_key(job_id))  # what job_status_ttl does to a finished job
        assert (await client.get(f"/v1/jobs/{job_id}", headers=auth())).json()["status"] == "failed"
        switch.mended = True
        response = await client.post(f"/v1/jobs/{job_id}/retry", headers=auth())
        assert response.status_code == 202
        rebuilt = await store.get(job_id)
        assert rebuilt is not None
        assert rebuilt.tenant == "acme"
        assert rebuilt.params == {"fail": "permanent", "code": "bad_peer"}
        assert rebuilt.timeout == 5.0
        assert rebuilt.seq > row["seq"]
        assert [h.code for h in rebuilt.history] == ["bad_peer"]
        done = await wait_for_status(client, job_id, {"succeeded"})
    assert done["requeued"] == 1
    assert done["attempts"] == 1
    assert await redis.ttl(job_key(job_id)) > 0  # finished again: the hash expires again
    await eventually(
        lambda: pg.fetchval(
            "SELECT status = 'succeeded' AND dead_at IS NULL FROM jobs WHERE id = $1",
            uuid.UUID(job_id),
        )
    )


async def test_bulk_requeue_takes_what_the_filter_selects(
    switch: breakable.Switch, store: JobStore, redis: Redis, pg: asyncpg.Connection[Any]
) -> None:
    before = requeued_metric("bulk")
    peers = [
        await breakable.submit(store, params={"fail": "permanent", "code": "bad_peer"})
        for _ in range(3)
    ]
    others = [
        await breakable.submit(store, params={"fail": "permanent", "code": "forbidden"})
        for _ in range(2)
    ]
    async with gateway_client() as client, running_worker(worker_poll_delay=0.05):
        for job_id in peers + others:
            await wait_for_status(client, job_id, {"failed"})
        switch.mended = True
        nothing = await client.post("/v1/dead-letters:requeue", json={}, headers=auth("globex"))
        assert nothing.json() == {"requeued": 0, "ids": [], "skipped": []}

        response = await client.post(
            "/v1/dead-letters:requeue", json={"error_code": "bad_peer"}, headers=auth()
        )
        assert response.status_code == 202
        body = response.json()
        assert body["requeued"] == 3
        assert set(body["ids"]) == set(peers)
        assert body["skipped"] == []
        for job_id in peers:
            assert (await wait_for_status(client, job_id, {"succeeded"}))["requeued"] == 1
        left = await dead_letters(client)
        assert {i["id"] for i in left} == set(others)

        newest = left[0]["id"]
        # As if the archive still held a requeued job as the newest dead letter: it must
        # neither take the page's one place nor hide the dead letters below it.
        await breakable.archive_all(redis)
        await pg.execute(
            "UPDATE jobs SET status = 'failed', dead_at = now() + interval '1 hour', seq = 0 "
            "WHERE id = $1",
            uuid.UUID(peers[0]),
        )
        one = await client.post("/v1/dead-letters:requeue", json={"limit": 1}, headers=auth())
        assert one.json()["ids"] == [newest]
        await wait_for_status(client, newest, {"succeeded"})
    assert requeued_metric("bulk") == before + 4
    assert await redis.zcount(DEAD_LETTERS, "(0", "+inf") == 1


async def test_retry_refuses_unknown_and_unfailed_jobs(
    switch: breakable.Switch, store: JobStore
) -> None:
    (failed,) = await failed_in_store(store, 1)
    (gone,) = await failed_in_store(store, 1, job_type="test.gone")
    queued = await breakable.submit(store)
    async with gateway_client() as client:
        cancelled = (
            await client.post(
                "/v1/jobs", json={"type": "system.echo", "defer_seconds": 60}, headers=auth()
            )
        ).json()["id"]
        await client.delete(f"/v1/jobs/{cancelled}", headers=auth())

        async def retry(job_id: str, tenant: str = "acme") -> httpx.Response:
            return await client.post(f"/v1/jobs/{job_id}/retry", headers=auth(tenant))

        for job_id, tenant in ((str(uuid.uuid4()), "acme"), ("nope", "acme"), (failed, "globex")):
            response = await retry(job_id, tenant)
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "job_not_found"
        for job_id, status in ((queued, "queued"), (cancelled, "cancelled")):
            response = await retry(job_id)
            assert response.status_code == 409
            assert response.json()["error"]["code"] == "job_not_failed"
            assert response.json()["error"]["details"] == {"status": status}
        response = await retry(gone)
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "unknown_job_type"

        assert (await retry(failed)).status_code == 202
        twice = await retry(failed)  # now queued: a second retry is refused
        assert twice.status_code == 409
        assert twice.json()["error"]["details"] == {"status": "queued"}

        bulk = await client.post("/v1/dead-letters:requeue", json={}, headers=auth())
    assert bulk.json() == {
        "requeued": 0,
        "ids": [],
        "skipped": [{"id": gone, "reason": "unknown_job_type"}],
    }


async def test_listing_needs_read_and_requeue_needs_write(store: JobStore) -> None:
    (job_id,) = await failed_in_store(store, 1)
    reader = auth(scopes=("jobs:read",))
    writer = auth(scopes=("jobs:write",))
    async with gateway_client() as client:
        assert (await client.get("/v1/dead-letters", headers=reader)).status_code == 200
        refusals = [
            await client.get("/v1/dead-letters", headers=writer),
            await client.post(f"/v1/jobs/{job_id}/retry", headers=reader),
            await client.post("/v1/dead-letters:requeue", json={}, headers=reader),
            await client.get("/v1/dead-letters"),
        ]
    assert [r.status_code for r in refusals] == [403, 403, 403, 401]
    assert refusals[0].json()["error"]["code"] == "insufficient_scope"


async def test_bad_filters_get_a_clear_4xx() -> None:
    naive = "2025-01-01T00:00:00"
    late, early = "2025-02-01T00:00:00Z", "2025-01-01T00:00:00Z"
    async with gateway_client() as client:
        listing = {
            "limit=0": 422,
            "limit=201": 422,
            f"since={naive}": 422,
            "until=yesterday": 422,
            f"since={late}&until={early}": 422,
            "type=": 422,
            "cursor=bm90LWEtY3Vyc29y": 400,
        }
        for query, status in listing.items():
            response = await client.get(f"/v1/dead-letters?{query}", headers=auth())
            assert response.status_code == status, (query, response.text)
            error = response.json()["error"]
            assert error["code"] in {"invalid_request", "invalid_cursor"}
            assert error["message"]
        bodies: list[Any] = [
            {"limit": 0},
            {"limit": 1001},
            {"since": naive},
            {"since": late, "until": early},
            {"eror_code": "typo"},
            {"type": 7},
            [],
        ]
        for body in bodies:
            response = await client.post("/v1/dead-letters:requeue", json=body, headers=auth())
            assert response.status_code == 422, (body, response.text)
            assert response.json()["error"]["code"] == "invalid_request"
        broken = await client.post(
            "/v1/dead-letters:requeue",
            content=b"{not json",
            headers={**auth(), "Content-Type": "application/json"},
        )
        assert broken.status_code == 400
        assert broken.json()["error"]["code"] == "invalid_json"


async def test_retry_waits_for_the_failed_runs_worker_to_let_go(
    switch: breakable.Switch, store: JobStore, redis: Redis
) -> None:
    """Until ARQ has cleaned up after the failed run (its in-progress key), a requeue
    would be undone by that cleanup: retry waits briefly, then answers 409."""
    quick, stuck = await failed_in_store(store, 2)
    await redis.set(f"arq:in-progress:{quick}", "1", px=300)
    await redis.set(f"arq:in-progress:{stuck}", "1", px=60_000)
    async with gateway_client() as client:
        assert (await client.post(f"/v1/jobs/{quick}/retry", headers=auth())).status_code == 202
        response = await client.post(f"/v1/jobs/{stuck}/retry", headers=auth())
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "job_finishing"
        assert response.headers["Retry-After"] == "1"
        bulk = await client.post("/v1/dead-letters:requeue", json={}, headers=auth())
    assert bulk.json()["skipped"] == [{"id": stuck, "reason": "job_finishing"}]
    record = await store.get(stuck)
    assert record is not None
    assert record.status == "failed"


async def test_requeue_refuses_jobs_of_unusable_accounts(
    switch: breakable.Switch, store: JobStore, redis: Redis, pg: asyncpg.Connection[Any]
) -> None:
    disabled, active, missing = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await pg.execute("INSERT INTO tenants (id, name) VALUES ('acme', 'acme')")
    await pg.execute(
        "INSERT INTO accounts (id, tenant_id, state, disabled_reason) VALUES "
        "($1, 'acme', 'disabled', 'revoked'), ($2, 'acme', 'active', NULL)",
        disabled,
        active,
    )
    jobs = {
        account: (await failed_in_store(store, 1, params={"account_id": str(account)}))[0]
        for account in (disabled, active, missing)
    }
    async with gateway_client() as client:
        single = await client.post(f"/v1/jobs/{jobs[disabled]}/retry", headers=auth())
        assert single.status_code == 409
        assert single.json()["error"]["code"] == "account_not_active"
        bulk = (await client.post("/v1/dead-letters:requeue", json={}, headers=auth())).json()
    assert bulk["ids"] == [jobs[active]]
    assert sorted(bulk["skipped"], key=lambda s: s["reason"]) == [
        {"id": jobs[disabled], "reason": "account_not_active"},
        {"id": jobs[missing], "reason": "account_not_found"},
    ]
