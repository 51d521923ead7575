"""The webhook deliverer: shared claims across workers, leases, backoff, metrics."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from services.worker.webhooks import backoff_delay
from shared.delivery.webhooks import WebhookStore
from shared.jobs.envelope import to_micros, utcnow
from shared.queue import JobStore
from tests.helpers import auth, eventually, gateway_client, running_worker
from tests.monitor.conftest import serving
from tests.monitor.receivers import Hook
from tests.shared.test_delivery import _record, envelope

WORKER = {
    "webhook_allow_private": True,
    "webhook_poll_seconds": 0.1,
    "webhook_timeout": 1.0,
    "webhook_lease_seconds": 1.5,
}


@pytest.fixture
async def hook() -> AsyncIterator[tuple[Hook, str]]:
    receiver = Hook()
    async with serving(receiver.app()) as base:
        yield receiver, f"{base}/hook"


def delivered_count() -> float:
    return (
        REGISTRY.get_sample_value("tgflow_webhook_deliveries_total", {"outcome": "delivered"})
        or 0.0
    )


def test_backoff_grows_within_its_jitter() -> None:
    for attempt, ceiling in ((1, 10), (2, 20), (3, 40), (7, 300), (20, 300)):
        delays = [backoff_delay(attempt, 10, 300) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 100  # jittered


async def test_two_workers_never_post_one_attempt_twice(
    hook: tuple[Hook, str], redis: Redis, store: JobStore
) -> None:
    receiver, url = hook
    receiver.script = [(0.05, 200)] * 40  # slow enough for the workers to overlap
    ids = []
    for _ in range(40):
        env = envelope(url)
        await store.submit(env)
        await store.cancel(await _record(store, env.id), to_micros(utcnow()))
        ids.append(env.id)
    before = delivered_count()
    async with running_worker(**WORKER), running_worker(**WORKER):

        async def all_received() -> bool:
            return len(receiver.requests) >= 40 and await redis.zcard("tgflow:webhooks:due") == 0

        await eventually(all_received, timeout=20)
    per_delivery = Counter(h["x-tgflow-delivery"] for h, _ in receiver.requests)
    assert len(per_delivery) == 40
    assert set(per_delivery.values()) == {1}
    assert delivered_count() - before == 40


async def test_an_attempt_cut_off_by_a_dead_claimer_is_made_again(
    hook: tuple[Hook, str], redis: Redis, store: JobStore
) -> None:
    receiver, url = hook
    env = envelope(url)
    await store.submit(env)
    await store.cancel(await _record(store, env.id), to_micros(utcnow()))
    # A worker claims the attempt and dies before it posts or settles.
    [lost] = await WebhookStore(redis, ttl=600).claim(to_micros(utcnow()), 500, 1, "dead")
    assert lost.attempt == 1
    async with gateway_client() as client, running_worker(**WORKER):

        async def delivered() -> dict[str, Any] | None:
            job = (await client.get(f"/v1/jobs/{env.id}", headers=auth())).json()
            hook_state: dict[str, Any] = job["webhook"]
            return hook_state if hook_state["status"] == "delivered" else None

        state = await eventually(delivered)
    assert state["attempts"] == 2
    assert [h["x-tgflow-attempt"] for h, _ in receiver.requests] == ["2"]


@pytest.mark.parametrize(
    ("url", "allow_private", "error"),
    [
        ("http://127.0.0.1:9/hook", True, "ConnectError"),  # nothing listens on port 9
        # Stored before hosts were checked at submit: resolving it cannot even begin.
        ("http://a..b/hook", False, "UnicodeError"),
    ],
)
async def test_an_unreachable_receiver_is_retried_then_given_up(
    redis: Redis, store: JobStore, url: str, allow_private: bool, error: str
) -> None:
    env = envelope(url)
    await store.submit(env)
    await store.cancel(await _record(store, env.id), to_micros(utcnow()))
    settings = {
        **WORKER,
        "webhook_max_attempts": 2,
        "webhook_backoff_seconds": 0.05,
        "webhook_allow_private": allow_private,
    }
    async with gateway_client() as client, running_worker(**settings):

        async def failed() -> dict[str, Any] | None:
            job = (await client.get(f"/v1/jobs/{env.id}", headers=auth())).json()
            hook_state: dict[str, Any] = job["webhook"]
            return hook_state if hook_state["status"] == "failed" else None

        state = await eventually(failed)
    assert state["attempts"] == 2
    assert state["last_status_code"] is None
    assert error in state["last_error"]


async def test_private_addresses_are_refused_at_delivery(redis: Redis, store: JobStore) -> None:
    env = envelope("http://localhost:9/hook")  # a name: only resolving it tells
    await store.submit(env)
    await store.cancel(await _record(store, env.id), to_micros(utcnow()))
    settings = {**WORKER, "webhook_allow_private": False, "webhook_max_attempts": 1}
    async with gateway_client() as client, running_worker(**settings):

        async def failed() -> dict[str, Any] | None:
            job = (await client.get(f"/v1/jobs/{env.id}", headers=auth())).json()
            hook_state: dict[str, Any] = job["webhook"]
            return hook_state if hook_state["status"] == "failed" else None

        state = await eventually(failed)
    assert "non-public address" in state["last_error"]
