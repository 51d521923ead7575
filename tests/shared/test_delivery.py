"""The job scripts' side of delivery: one event per change, webhooks scheduled atomically."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from shared.delivery.events import JobEvent
from shared.delivery.webhooks import WebhookStatus, WebhookStore, delivery_id, url_problem
from shared.jobs.envelope import Envelope, to_micros, utcnow
from shared.jobs.record import JobRecord
from shared.queue import JobStore
from tests.helpers import echo_envelope


def envelope(webhook_url: str | None = None) -> Envelope:
    return echo_envelope(webhook_url=webhook_url)


async def collect(redis: Redis, channel: str, count: int) -> list[dict[str, Any]]:
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel)
    messages: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(5):
            while len(messages) < count:
                message = await pubsub.get_message(timeout=1)
                if message is not None:
                    messages.append(orjson.loads(message["data"]))
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    return messages


async def test_every_change_publishes_one_event_with_its_seq(redis: Redis, store: JobStore) -> None:
    env = envelope()
    listening = asyncio.create_task(collect(redis, f"tgflow:job-events:{env.id}", 6))
    await asyncio.sleep(0.1)
    await store.submit(env)
    running = {"status": "running", "attempts": "1"}
    await store.transition(env.id, running, allowed_from=("queued",))
    await store.transition(env.id, {"progress": '{"done": 1}'}, allowed_from=("running",))
    error = '{"code": "server_error", "message": "again"}'
    await store.transition(env.id, {"status": "queued", "error": error}, allowed_from=("running",))
    await store.transition(env.id, {**running, "attempts": "2"}, allowed_from=("queued",))
    await store.transition(
        env.id, {"status": "succeeded", "result": "{}"}, allowed_from=("running",), final=True
    )
    messages = await listening
    events = [JobEvent.from_message(env.id, orjson.dumps(m)) for m in messages]
    assert [(e.event, e.seq) for e in events] == [
        ("queued", 1),
        ("started", 2),
        ("progress", 3),
        ("retrying", 4),
        ("started", 5),
        ("finished", 6),
    ]
    assert events[2].progress == {"done": 1}
    assert events[3].error is not None
    assert events[3].error.code == "server_error"
    assert await redis.exists(f"tgflow:webhook:{env.id}") == 0  # no URL, no delivery


async def test_the_final_change_schedules_the_webhook_in_the_same_step(
    redis: Redis, store: JobStore
) -> None:
    env = envelope("https://example.com/hook")
    await store.submit(env)
    await store.transition(env.id, {"status": "running"}, allowed_from=("queued",))
    assert await redis.zcard("tgflow:webhooks:due") == 0
    before_ms = to_micros(utcnow()) // 1000
    await store.transition(env.id, {"status": "failed"}, allowed_from=("running",), final=True)
    due = await redis.zscore("tgflow:webhooks:due", env.id)
    assert due is not None
    assert before_ms <= due <= before_ms + 1000
    record = await redis.hgetall(f"tgflow:webhook:{env.id}")
    assert record["status"] == "pending"
    assert record["url"] == "https://example.com/hook"
    assert orjson.loads(record["job"])["status"] == "failed"
    # A job finishes once: nothing re-schedules or rewrites the delivery.
    changed, _ = await store.transition(
        env.id, {"status": "succeeded"}, allowed_from=("running",), final=True
    )
    assert not changed


async def test_a_claim_is_leased_and_a_stale_claimer_cannot_settle(
    redis: Redis, store: JobStore
) -> None:
    hooks = WebhookStore(redis, ttl=600)
    env = envelope("https://example.com/hook")
    await store.submit(env)
    await store.cancel(await _record(store, env.id), to_micros(utcnow()))
    now = to_micros(utcnow())
    [first] = await hooks.claim(now, 200, 10, "worker-a")
    assert (first.attempt, first.delivery_id) == (1, delivery_id(env.id))
    assert await hooks.claim(now, 200, 10, "worker-b") == []  # leased to worker-a
    [second] = await hooks.claim(now + 300_000, 200, 10, "worker-b")  # the lease ran out
    assert second.attempt == 2
    assert not await hooks.settle(first, WebhookStatus.DELIVERED, {})
    assert await hooks.settle(second, WebhookStatus.DELIVERED, {})
    assert await redis.zcard("tgflow:webhooks:due") == 0
    assert 0 < await redis.ttl(f"tgflow:webhook:{env.id}") <= 600


@pytest.mark.parametrize(
    ("url", "allow_private", "ok"),
    [
        ("https://example.com/hooks?x=1", False, True),
        ("http://user:pw@example.com:8080/h", False, True),
        ("http://203.0.113.9/h", False, False),  # documentation range: not global
        ("http://8.8.8.8/h", False, True),
        ("http://127.0.0.1:9/h", True, True),
        ("http://127.0.0.1:9/h", False, False),
        ("http://foo.localhost/h", False, False),
        ("javascript:alert(1)", True, False),
        ("https://example.com/\n", True, False),
        ("http://a..b/h", True, False),  # an empty label: no client can send there
        ("http://" + "a" * 64 + ".example.com/h", True, False),  # a label over 63
        ("https://bücher.example/h", False, True),
    ],
)
def test_url_rules(url: str, allow_private: bool, ok: bool) -> None:
    assert (url_problem(url, allow_private=allow_private) is None) is ok


async def _record(store: JobStore, job_id: str) -> JobRecord:
    record = await store.get(job_id)
    assert record is not None
    return record
