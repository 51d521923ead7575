"""Notification behaviour, after Alertmanager's: grouping and group_wait, cooldown,
repeat, resolved, acknowledgement, silences and their expiry, inhibition, cold start,
timeouts and retries. A manual clock drives every cycle; Postgres is real, and so
are the receivers (HTTP on loopback, a small SMTP server)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg
import orjson
import pytest
from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis

from services.monitor.api import NewSilence, create_silence
from services.monitor.clock import ManualClock
from services.monitor.engine import Engine
from services.monitor.lifecycle import AlertState
from services.monitor.notifiers.telegram import JOB_TYPE
from shared.jobs import REGISTRY, JobType, QueueKind
from shared.jobs.routing import shard_of, shard_queue
from shared.signing import sign
from tests.monitor.conftest import StaticCollector, serving
from tests.monitor.receivers import Hook, SmtpServer

RULES = """
rules:
  - name: High
    expr: load > 1
    severity: warning
    labels: {team: core}
    annotations: {summary: "{{ $labels.svc }} at {{ $value }}"}
"""


def config(url: str, **receiver: Any) -> dict[str, Any]:
    route = receiver.pop("route", {})
    return {
        "receivers": [
            {"name": "hook", "kind": "webhook", "url": url + "/hook", "secret": "s3cret",
             "retry_attempts": 3, "retry_backoff": 0.01, **receiver}
        ],
        "route": {"receiver": "hook", "group_by": ["alertname"], "group_wait": "30s",
                  "cooldown": "60s", "repeat_interval": "5m", **route},
    }  # fmt: skip


@pytest.fixture
async def hook() -> AsyncIterator[tuple[Hook, str]]:
    h = Hook()
    async with serving(h.app()) as url:
        yield h, url


Factory = Callable[..., Engine]


async def at(engine: Engine, clock: ManualClock, t: float) -> None:
    """Run one cycle at ``t`` seconds after the start, and wait for its deliveries."""
    clock.t = 1_700_000_000.0 + t
    await engine.cycle()
    await engine.dispatcher.idle()


def alert_names(body: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted((a["labels"].get("svc", ""), a["status"]) for a in body["alerts"])


async def started(
    factory: Factory, url: str, rules: str = RULES, **kw: Any
) -> tuple[Engine, StaticCollector]:
    src = StaticCollector("src", {"load"})
    engine = factory(rules, config(url, **kw), [src])
    await engine.start()
    return engine, src


async def test_group_wait_batches_alerts_of_one_group(
    engine_factory: Factory, clock: ManualClock, hook: tuple[Hook, str]
) -> None:
    h, url = hook
    engine, src = await started(engine_factory, url)
    src.set("load", 2, svc="a")
    await at(engine, clock, 0)
    src.set("load", 3, svc="b")
    await at(engine, clock, 15)
    assert h.requests == []  # still within group_wait
    await at(engine, clock, 30)
    assert len(h.requests) == 1
    (body,) = h.bodies
    assert alert_names(body) == [("a", "firing"), ("b", "firing")]
    assert body["status"] == "firing"
    assert body["group_labels"] == {"alertname": "High"}
    assert body["common_labels"] == {"alertname": "High", "severity": "warning", "team": "core"}
    assert {a["annotations"]["summary"] for a in body["alerts"]} == {"a at 2", "b at 3"}


async def test_group_by_splits_groups(
    engine_factory: Factory, clock: ManualClock, hook: tuple[Hook, str]
) -> None:
    h, url = hook
    engine, src = await started(engine_factory, url, route={"group_by": ["svc"]})
    src.set("load", 2, svc="a")
    src.set("load", 2, svc="b")
    await at(engine, clock, 0)
    await at(engine, clock, 30)
    assert sorted(alert_names(b)[0][0] for b in h.bodies) == ["a", "b"]
    assert sorted(b["group_key"] for b in h.bodies) == ['0:{svc="a"}', '0:{svc="b"}']


async def test_cooldown_holds_new_alerts_until_the_next_flush(
    engine_factory: Factory, clock: ManualClock, hook: tuple[Hook, str]
) -> None:
    h, url = hook
    engine, src = await started(engine_factory, url)
    src.set("load", 2, svc="a")
    await at(engine, clock, 0)
    await at(engine, clock, 30)
    assert len(h.requests) == 1
    src.set("load", 2, svc="c")
    await at(engine, clock, 45)
    await at(engine, clock, 75)
    assert len(h.requests) == 1  # next flush is at 30 + 60
    await at(engine, clock, 90)
    assert len(h.requests) == 2
    assert alert_names(h.bodies[1]) == [("a", "firing"), ("c", "firing")]


async def test_unchanged_groups_repeat_after_repeat_interval(
    engine_factory: Factory, clock: ManualClock, hook: tuple[Hook, str]
) -> None:
    h, url = hook
    engine, src = await started(engine_factory, url)
    src.set("load", 2, svc="a")
    sent_at = []
    for t in range(0, 700, 15):
        before = len(h.requests)
        await at(engine, clock, t)
        if len(h.requests) > before:
            sent_at.append(t)
    assert sent_at == [30, 330, 630]  # first after group_wait, then every 5 minutes
    ids = [b["id"] for b in h.bodies]
    assert len(set(ids)) == 3  # a repeat is a new notification, not a retry


@pytest.mark.parametrize("send_resolved", [True, False])
async def test_resolved_notifications_follow_the_receiver_setting(
    engine_factory: Factory, clock: ManualClock, hook: tuple[Hook, str], send_resolved: bool
) -> None:
    h, url = hook
    engine, src = await started(engine_factory, url, send_resolved=send_resolved)
    src.set("load", 2, svc="a")
    await at(engine, clock, 0)
    await at(engine, clock, 30)
    src.set("load", 0, svc="a")
    await at(engine, clock, 45)
    await at(engine, clock, 90)
    if send_resolved:
        assert len(h.requests) == 2
        assert h.bodies[1]["status"] == "resolved"
        assert alert_names(h.bodies[1]) == [("a", "resolved")]
        assert h.bodies[1]["alerts"][0]["endsAt"] == "2023-11-14T22:14:05+00:00"  # t = 45 s
    else:
        assert len(h.requests) == 1
    assert engine.dispatcher.referenced() == set()  # the log no longer owes anything
    # Firing again is a new episode: the group still exists, so it is told at its next
    # flush (one cooldown after the last), and told as new.
    src.set("load", 5, svc="a")
    await at(engine, clock, 105)
    await at(engine, clock, 135)
    assert len(h.requests) == (2 if send_resolved else 1)
    await at(engine, clock, 150)
    assert h.bodies[-1]["status"] == "firing"
    assert len(h.requests) == (3 if send_resolved else 2)


async def test_acknowledged_alerts_do_not_repeat_until_they_resolve(
    engine_factory: Factory, clock: ManualClock, hook: tuple[Hook, str]
) -> None:
    h, url = hook
    engine, src = await started(engine_factory, url, send_resolved=False)
    src.set("load", 2, svc="a")
    await at(engine, clock, 0)
    await at(engine, clock, 30)
    (alert,) = engine.tracker.open.values()
    engine.tracker.acknowledge(alert, clock.now(), "ops")
    for t in range(45, 700, 15):
        await at(engine, clock, t)
    assert len(h.requests) == 1  # no repeats at 330 or 630
    # A new alert in the group is news: sent, and the acknowledged one is shown as such.
    src.set("load", 2, svc="b")
    await at(engine, clock, 705)
    await at(engine, clock, 750)
    flags = {a["labels"]["svc"]: a["acknowledged"] for a in h.bodies[-1]["alerts"]}
    assert flags == {"a": True, "b": False}
    # Resolution re-arms: the next episode of "a" notifies again.
    src.set("load", 0, svc="a")
    src.set("load", 0, svc="b")
    await at(engine, clock, 765)
    await at(engine, clock, 810)
    src.set("load", 2, svc="a")
    await at(engine, clock, 825)
    await at(engine, clock, 870)
    assert alert_names(h.bodies[-1]) == [("a", "firing")]
    assert h.bodies[-1]["alerts"][0]["acknowledged"] is False


async def test_silences_mute_until_they_expire(
    engine_factory: Factory, clock: ManualClock, hook: tuple[Hook, str]
) -> None:
    h, url = hook
    engine, src = await started(engine_factory, url)
    await at(engine, clock, 0)
    silence = await create_silence(
        engine, NewSilence(matchers=['svc="a"'], duration="2m", created_by="ops", comment="deploy")
    )
    src.set("load", 2, svc="a")
    src.set("load", 2, svc="b")
    await at(engine, clock, 15)
    await at(engine, clock, 45)
    assert alert_names(h.bodies[0]) == [("b", "firing")]
    muted = [a for a in engine.tracker.open.values() if a.labels["svc"] == "a"]
    assert muted[0].muted_by == [f"silence:{silence.id}"]
    await at(engine, clock, 105)
    assert len(h.requests) == 1
    # The silence ends at 120 s: the next flush tells the receiver about "a".
    await at(engine, clock, 165)
    assert len(h.requests) == 2
    assert alert_names(h.bodies[1]) == [("a", "firing"), ("b", "firing")]
    # Silences are in Postgres: another engine sees it, expired.
    other = await started(engine_factory, url)
    assert other[0].silences == []


async def test_inhibition_mutes_consequences_while_the_cause_fires(
    engine_factory: Factory, clock: ManualClock, hook: tuple[Hook, str]
) -> None:
    h, url = hook
    rules = """
rules:
  - {name: RedisDown, expr: redis_up == 0, severity: critical, labels: {component: redis}}
  - {name: QueueSlow, expr: depth > 5, severity: warning, labels: {component: queue}}
"""
    src = StaticCollector("src", {"redis_up", "depth"})
    cfg = config(url)
    cfg["inhibit_rules"] = [
        {
            "source_matchers": ['alertname="RedisDown"'],
            "target_matchers": ['component=~"redis|queue"'],
        }
    ]
    engine = engine_factory(rules, cfg, [src])
    await engine.start()
    src.set("redis_up", 0)
    src.set("depth", 9, queue="ai")
    await at(engine, clock, 0)
    await at(engine, clock, 30)
    assert [b["group_labels"]["alertname"] for b in h.bodies] == ["RedisDown"]
    slow = next(a for a in engine.tracker.open.values() if a.rule == "QueueSlow")
    assert slow.state is AlertState.FIRING
    assert slow.muted_by == ["inhibited_by:RedisDown"]
    redis_down = next(a for a in engine.tracker.open.values() if a.rule == "RedisDown")
    assert redis_down.muted_by == []  # a source is never muted by its own rule
    src.set("redis_up", 1)
    await at(engine, clock, 45)
    await at(engine, clock, 90)
    told = {(b["group_labels"]["alertname"], b["status"]) for b in h.bodies[1:]}
    assert told == {("RedisDown", "resolved"), ("QueueSlow", "firing")}


async def test_cold_start_sends_nothing_twice_and_forgets_nothing(
    engine_factory: Factory, clock: ManualClock, hook: tuple[Hook, str]
) -> None:
    h, url = hook
    engine, src = await started(engine_factory, url)
    src.set("load", 2, svc="a")
    await at(engine, clock, 0)
    await at(engine, clock, 30)
    assert len(h.requests) == 1
    # A new process: state comes back from Postgres, and nothing is re-sent.
    engine2, src2 = await started(engine_factory, url)
    src2.set("load", 2, svc="a")
    for t in range(45, 300, 15):
        await at(engine2, clock, t)
    assert len(h.requests) == 1
    (alert,) = engine2.tracker.open.values()
    assert alert.id == next(iter(engine.tracker.open.values())).id  # the same episode
    # Now the receiver breaks, a new alert cannot be delivered, and the process restarts.
    h.script = [(0, 500)] * 3
    src2.set("load", 2, svc="b")
    await at(engine2, clock, 300)
    await at(engine2, clock, 330)
    assert len(h.requests) == 4  # three failed attempts
    engine3, src3 = await started(engine_factory, url)
    src3.set("load", 2, svc="a")
    src3.set("load", 2, svc="b")
    await at(engine3, clock, 345)
    await at(engine3, clock, 375)
    assert len(h.requests) == 5
    assert alert_names(h.bodies[-1]) == [("a", "firing"), ("b", "firing")]
    # Every retry of one notification carried the same id.
    assert len({b["id"] for b in h.bodies[1:]}) == 1


async def test_a_slow_receiver_times_out_is_retried_and_never_blocks_evaluation(
    engine_factory: Factory, clock: ManualClock, hook: tuple[Hook, str], pg: asyncpg.Connection[Any]
) -> None:
    h, url = hook
    engine, src = await started(engine_factory, url, timeout=0.3)
    h.script = [(1.0, 200), (0, 200)]
    src.set("load", 2, svc="a")
    await at(engine, clock, 0)
    clock.t += 30
    started_at = time.monotonic()
    await engine.cycle()
    assert time.monotonic() - started_at < 0.25  # the delivery runs beside evaluation
    await engine.dispatcher.idle()
    assert len(h.requests) == 2
    row = await pg.fetchrow("SELECT * FROM monitor_notifications")
    assert (row["outcome"], row["attempts"], row["receiver"]) == ("sent", 2, "hook")
    assert engine.dispatcher.status["hook"].last_outcome == "sent"


async def test_failures_are_visible_and_final_ones_are_not_retried(
    engine_factory: Factory, clock: ManualClock, hook: tuple[Hook, str], pg: asyncpg.Connection[Any]
) -> None:
    h, url = hook
    engine, src = await started(engine_factory, url)
    h.script = [(0, 400)]
    src.set("load", 2, svc="a")
    await at(engine, clock, 0)
    await at(engine, clock, 30)
    assert len(h.requests) == 1  # a 400 will not get better by asking again
    h.script = [(0, 503)] * 3
    await at(engine, clock, 90)
    assert len(h.requests) == 4
    rows = await pg.fetch("SELECT outcome, attempts, error FROM monitor_notifications ORDER BY id")
    assert [(r["outcome"], r["attempts"]) for r in rows] == [("failed", 1), ("failed", 3)]
    assert "HTTP 503" in rows[1]["error"]
    status = engine.dispatcher.status["hook"]
    assert (status.failed, status.last_outcome) == (2, "failed")
    assert "HTTP 503" in (status.last_error or "")
    # Evaluation went on throughout, and the next flush delivers.
    await at(engine, clock, 150)
    assert len(h.requests) == 5
    assert engine.dispatcher.status["hook"].last_outcome == "sent"


async def test_webhook_bodies_are_signed(
    engine_factory: Factory, clock: ManualClock, hook: tuple[Hook, str]
) -> None:
    h, url = hook
    engine, src = await started(engine_factory, url)
    src.set("load", 2, svc="a")
    await at(engine, clock, 0)
    await at(engine, clock, 30)
    ((headers, body),) = h.requests
    timestamp = headers["x-tgflow-timestamp"]
    assert timestamp == str(int(clock.now()))
    assert headers["x-tgflow-signature"] == sign("s3cret", timestamp, body)
    assert headers["x-tgflow-signature"] != sign("other", timestamp, body)
    assert headers["x-tgflow-notification-id"] == orjson.loads(body)["id"]


async def test_alertmanager_and_slack_payloads(
    engine_factory: Factory, clock: ManualClock, hook: tuple[Hook, str]
) -> None:
    h, url = hook
    cfg = {
        "receivers": [
            {"name": "am", "kind": "alertmanager", "url": url + "/hook"},
            {"name": "slack", "kind": "slack", "url": url + "/hook", "channel": "#ops"},
        ],
        "route": {"receiver": "am", "group_wait": "0s",
                  "routes": [{"matchers": ["team=core"], "receiver": "am", "continue": True},
                             {"matchers": ["team=core"], "receiver": "slack"}]},
    }  # fmt: skip
    src = StaticCollector("src", {"load"})
    engine = engine_factory(RULES, cfg, [src])
    await engine.start()
    src.set("load", 2, svc="a")
    await at(engine, clock, 0)
    bodies = {("version" in b): b for b in h.bodies}
    am, slack = bodies[True], bodies[False]
    assert am["version"] == "4"
    assert am["receiver"] == "am"
    assert am["groupKey"] == '0.0:{alertname="High"}'
    assert am["alerts"][0]["labels"]["svc"] == "a"
    assert am["alerts"][0]["endsAt"] == "0001-01-01T00:00:00Z"
    assert set(am["alerts"][0]) == {
        "status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"
    }  # fmt: skip
    assert slack["channel"] == "#ops"
    assert slack["text"] == "[FIRING] High (1 firing)"
    assert slack["attachments"][0]["title"] == "a at 2"
    assert slack["attachments"][0]["color"] == "warning"


async def test_email_over_smtp(
    engine_factory: Factory, clock: ManualClock, pg: asyncpg.Connection[Any]
) -> None:
    smtp = SmtpServer()
    port = await smtp.start()
    try:
        cfg = {
            "receivers": [{"name": "mail", "kind": "email", "host": "127.0.0.1", "port": port,
                           "from": "monitor@tgflow.test", "to": ["ops@tgflow.test"]}],
            "route": {"receiver": "mail", "group_wait": "0s"},
        }  # fmt: skip
        src = StaticCollector("src", {"load"})
        engine = engine_factory(RULES, cfg, [src])
        await engine.start()
        src.set("load", 2, svc="a")
        await at(engine, clock, 0)
        (message,) = smtp.messages
        assert message["from"] == "<monitor@tgflow.test>"
        assert message["rcpt"] == ["<ops@tgflow.test>"]
        assert "Subject: [FIRING] High (1 firing)" in message["data"]
        assert "- FIRING [warning] a at 2" in message["data"]
        # A permanent SMTP refusal is recorded once, not hammered.
        smtp.reject_with = 554
        src.set("load", 2, svc="b")
        await at(engine, clock, 300)
        row = await pg.fetchrow(
            "SELECT outcome, attempts, error FROM monitor_notifications ORDER BY id DESC LIMIT 1"
        )
        assert (row["outcome"], row["attempts"]) == ("failed", 1)
        assert "SMTP 554" in row["error"]
    finally:
        await smtp.stop()


TELEGRAM = {
    "receivers": [
        {"name": "tg", "kind": "telegram", "chat": "@opsteam",
         "account": "00000000-0000-4000-8000-000000000001"}
    ],
    "route": {"receiver": "tg", "group_wait": "0s"},
}  # fmt: skip


class _StandInParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    account_id: uuid.UUID
    peer: str = Field(min_length=4)
    text: str


@pytest.fixture
def without_send_message() -> Iterator[None]:
    """The notifier as it is where Telegram jobs are not part of the build."""
    saved = REGISTRY.pop(JOB_TYPE, None)
    yield
    if saved is not None:
        REGISTRY[JOB_TYPE] = saved


# The shard queue of the notifying account (the monitor's job store here has 4 shards).
OPS_QUEUE = shard_queue(shard_of("00000000-0000-4000-8000-000000000001", 4))


@pytest.fixture
def send_message() -> Iterator[JobType[Any, Any]]:
    """The registered job type, or a stand-in of its shape where it is not."""
    if JOB_TYPE in REGISTRY:
        yield REGISTRY[JOB_TYPE]
        return
    REGISTRY[JOB_TYPE] = JobType(
        name=JOB_TYPE, params=_StandInParams, result=_StandInParams, queue=QueueKind.TELEGRAM,
        timeout=30, summary="stand-in",
    )  # fmt: skip
    yield REGISTRY[JOB_TYPE]
    del REGISTRY[JOB_TYPE]


@pytest.mark.usefixtures("without_send_message")
async def test_telegram_refuses_clearly_without_the_job_type(
    engine_factory: Factory, clock: ManualClock, pg: asyncpg.Connection[Any], redis: Redis
) -> None:
    src = StaticCollector("src", {"load"})
    engine = engine_factory(RULES, TELEGRAM, [src])
    await engine.start()
    src.set("load", 2, svc="a")
    await at(engine, clock, 0)
    row = await pg.fetchrow("SELECT outcome, attempts, error FROM monitor_notifications")
    assert (row["outcome"], row["attempts"]) == ("failed", 1)
    assert "telegram.send_message job type is not available" in row["error"]
    assert await redis.zcard(OPS_QUEUE) == 0


async def test_telegram_enqueues_one_send_message_job_per_notification(
    engine_factory: Factory,
    clock: ManualClock,
    redis: Redis,
    pg: asyncpg.Connection[Any],
    send_message: JobType[Any, Any],
) -> None:
    src = StaticCollector("src", {"load"})
    engine = engine_factory(RULES, TELEGRAM, [src])
    await engine.start()
    src.set("load", 2, svc="a")
    await at(engine, clock, 0)
    (job_id,) = await redis.zrange(OPS_QUEUE, 0, -1)
    job = await redis.hgetall(f"tgflow:job:{job_id}")
    params = orjson.loads(job["params"])
    assert job["type"] == JOB_TYPE
    assert (params["account_id"], params["peer"]) == (
        "00000000-0000-4000-8000-000000000001", "@opsteam"
    )  # fmt: skip
    assert params["text"].startswith("[FIRING] High (1 firing)")
    assert job["idempotency_key"].startswith("monitor:")
    # Params the job type refuses are a clear, final failure, not a queued job.
    bad = {**TELEGRAM, "receivers": [{**TELEGRAM["receivers"][0], "chat": "x"}]}  # type: ignore[dict-item]
    engine2 = engine_factory(RULES.replace("High", "Other"), bad, [src])
    await engine2.start()
    await at(engine2, clock, 15)
    row = await pg.fetchrow(
        "SELECT outcome, attempts, error FROM monitor_notifications ORDER BY id DESC LIMIT 1"
    )
    assert (row["outcome"], row["attempts"]) == ("failed", 1)
    assert "params do not fit" in row["error"]
    assert await redis.zcard(OPS_QUEUE) == 1


async def test_a_failing_collector_is_an_error_alert_not_silence(
    engine_factory: Factory, clock: ManualClock, hook: tuple[Hook, str]
) -> None:
    h, url = hook
    engine, src = await started(engine_factory, url)
    src.set("load", 2, svc="a")
    await at(engine, clock, 0)
    await at(engine, clock, 30)
    src.failure = ConnectionError("the source is down")
    await at(engine, clock, 45)
    await at(engine, clock, 90)
    states = sorted((a.labels.get("svc", a.labels.get("alertstate")), a.state.value)
                    for a in engine.tracker.open.values())  # fmt: skip
    assert states == [("a", "firing"), ("error", "error")]  # "a" is held, not resolved
    told = h.bodies[-1]
    assert sorted(a["state"] for a in told["alerts"]) == ["error", "firing"]
    error = next(a for a in told["alerts"] if a["state"] == "error")
    assert "the source is down" in error["annotations"]["description"]
    assert engine.rule_status["High"].health.value == "error"


async def test_pending_progress_and_alerts_survive_a_restart(
    engine_factory: Factory, clock: ManualClock, hook: tuple[Hook, str]
) -> None:
    _h, url = hook
    rules = RULES.replace("severity: warning", "severity: warning\n    for: 1m")
    engine, src = await started(engine_factory, url, rules)
    src.set("load", 2, svc="a")
    await at(engine, clock, 0)
    await at(engine, clock, 30)
    engine2, src2 = await started(engine_factory, url, rules)
    src2.set("load", 2, svc="a")
    await at(engine2, clock, 45)
    (alert,) = engine2.tracker.open.values()
    assert alert.state is AlertState.PENDING
    await at(engine2, clock, 60)
    assert alert.state is AlertState.FIRING
    assert alert.active_at == 1_700_000_000.0  # the for-duration counted from before the restart


async def test_evaluation_goes_on_while_postgres_is_away(
    engine_factory: Factory, clock: ManualClock, hook: tuple[Hook, str], pg: asyncpg.Connection[Any]
) -> None:
    _h, url = hook
    engine, src = await started(engine_factory, url)
    await engine.repo.pool.close()  # every write now fails
    src.set("load", 2, svc="a")
    await at(engine, clock, 0)
    (alert,) = engine.tracker.open.values()
    assert alert.state is AlertState.FIRING
    assert alert.id in engine.tracker.changed  # kept for the next successful write
    assert await pg.fetchval("SELECT count(*) FROM monitor_alerts") == 0
