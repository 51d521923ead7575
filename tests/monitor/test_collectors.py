"""Collectors against the real Redis and Postgres; absent sources and failures."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from services.monitor.clock import to_datetime
from services.monitor.collectors import Collected, Context, SourceAbsent
from services.monitor.collectors.accounts import AccountsCollector
from services.monitor.collectors.all import default_collectors
from services.monitor.collectors.deadletters import DEAD_LETTER_KEY, DeadLettersCollector
from services.monitor.collectors.jobs import JobsCollector
from services.monitor.collectors.postgres import PostgresCollector
from services.monitor.collectors.queues import QueuesCollector
from services.monitor.collectors.redis import RedisCollector
from services.monitor.collectors.scrape import ScrapeCollector
from services.monitor.collectors.shards import ShardsCollector
from services.monitor.collectors.system import SystemCollector
from services.monitor.collectors.webhooks import WebhooksCollector
from services.monitor.collectors.workers import WorkersCollector
from services.monitor.lifecycle import Tracker
from services.monitor.rules.evaluate import evaluate_rule
from services.monitor.rules.loader import load_rules
from services.monitor.sampler import Sampler
from services.monitor.samples import Sample
from services.monitor.store import SeriesStore
from shared import registry
from shared.config import MonitorSettings
from shared.delivery.lua import WEBHOOK_DUE
from shared.jobs.envelope import Envelope, utcnow
from shared.jobs.routing import shard_lease_key
from shared.queue import JobStore
from tests import breakable
from tests.monitor.conftest import StaticCollector, serving


def by_key(collected: Collected) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in collected.samples}


async def test_queues_depth_and_age_of_the_oldest_due_job(ctx: Context, redis: Redis) -> None:
    now_ms = ctx.clock.now() * 1000
    await redis.zadd(
        "tgflow:queue:control", {"a": now_ms - 90_000, "b": now_ms - 1000, "c": now_ms + 60_000}
    )
    await redis.zadd("tgflow:queue:ai", {"later": now_ms + 5000})
    got = by_key(await QueuesCollector().collect(ctx))
    assert got[("tgflow_queue_depth", (("queue", "control"),))] == 3
    assert got[("tgflow_queue_oldest_age_seconds", (("queue", "control"),))] == pytest.approx(90)
    assert got[("tgflow_queue_oldest_age_seconds", (("queue", "ai"),))] == 0  # deferred, not late
    assert got[("tgflow_queue_depth", (("queue", "telegram"),))] == 0


async def test_workers_and_their_heartbeat_age(ctx: Context, redis: Redis) -> None:
    await registry.announce(redis, "worker-1", {"id": "worker-1", "kind": "worker"}, ttl=30)
    await registry.announce(redis, "gw", {"id": "gw", "kind": "gateway"}, ttl=30)
    got = await WorkersCollector().collect(dataclasses.replace(ctx, clock=_real_clock()))
    values = by_key(got)
    assert values[("tgflow_workers_live", ())] == 1
    assert 0 <= values[("tgflow_worker_heartbeat_age_seconds", (("worker", "worker-1"),))] < 5


def _real_clock() -> Any:
    from services.monitor.clock import SystemClock

    return SystemClock()


async def test_redis_info_hit_ratio_and_slow_log(ctx: Context, redis: Redis) -> None:
    collector = RedisCollector()
    old = (await redis.config_get("slowlog-log-slower-than"))["slowlog-log-slower-than"]
    await redis.config_set("slowlog-log-slower-than", 0)
    try:
        await redis.slowlog_reset()
        first = await collector.collect(ctx)
        await redis.set("present", "1")
        async with redis.pipeline(transaction=False) as pipe:
            for _ in range(300):
                pipe.get("present")
            await pipe.execute()
        hits = await collector.collect(ctx)
        async with redis.pipeline(transaction=False) as pipe:
            for _ in range(300):
                pipe.get("absent")
            await pipe.execute()
        misses = await collector.collect(ctx)
    finally:
        await redis.config_set("slowlog-log-slower-than", old)
    assert by_key(first)[("tgflow_redis_up", ())] == 1
    assert ("tgflow_redis_hit_ratio", ()) not in by_key(first)  # no interval yet
    # The ratio covers each interval alone (INFO counts are server-wide, so other
    # clients' lookups blur it a little).
    assert by_key(hits)[("tgflow_redis_hit_ratio", ())] > 0.8
    assert by_key(misses)[("tgflow_redis_hit_ratio", ())] < 0.2
    assert by_key(misses)[("tgflow_redis_slowlog_length", ())] > 0
    assert any("GET" in e["command"].upper() for e in misses.details["slowlog"])
    assert "redis_version" in misses.details["info"]
    assert "executable" not in misses.details["info"]


async def test_redis_down_is_an_observation_not_a_failure(ctx: Context) -> None:
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    try:
        got = await RedisCollector().collect(dataclasses.replace(ctx, redis=dead))
    finally:
        await dead.aclose()
    assert by_key(got) == {("tgflow_redis_up", ()): 0.0}
    assert got.details["connected"] is False
    assert "Connection" in got.details["error"]


async def test_postgres_states_size_and_a_running_slow_query(
    ctx: Context, database_url: str
) -> None:
    fast = dataclasses.replace(ctx, settings=MonitorSettings(monitor_slow_query_ms=300))
    sleeper: asyncpg.Connection[Any] = await asyncpg.connect(database_url)
    try:
        slow = asyncio.create_task(sleeper.execute("SELECT pg_sleep(1.5)"))
        await asyncio.sleep(0.6)
        got = await PostgresCollector().collect(fast)
        await slow
    finally:
        await sleeper.close()
    values = by_key(got)
    assert values[("tgflow_db_slow_queries", (("source", "pg_stat_activity"),))] == 1
    (running,) = got.details["running"]
    assert "pg_sleep" in running["query"]
    assert running["running_ms"] >= 300
    assert values[("tgflow_db_size_bytes", ())] > 1_000_000
    assert values[("tgflow_db_connections", (("state", "active"),))] >= 1
    assert values[("tgflow_db_max_connections", ())] >= 10
    # The test server has no pg_stat_statements loaded: the fallback says so.
    assert "pg_stat_statements" in got.details["statements_source"]
    assert got.details["statements"] == []
    quiet = by_key(await PostgresCollector().collect(fast))
    assert quiet[("tgflow_db_slow_queries", (("source", "pg_stat_activity"),))] == 0


async def test_system_collector_reports_ratios_per_host(ctx: Context) -> None:
    got = await SystemCollector(["/"]).collect(ctx)
    names = {s.name: s for s in got.samples}
    for name in ("tgflow_host_cpu_utilization", "tgflow_host_memory_utilization"):
        assert 0 <= names[name].value <= 1
        assert names[name].labels["host"]
    disk = names["tgflow_host_disk_utilization"]
    assert disk.labels["path"] == "/"
    assert 0 < disk.value < 1
    with pytest.raises(FileNotFoundError):
        await SystemCollector(["/no/such/path"]).collect(ctx)


async def test_job_failure_ratio_from_the_archive(
    ctx: Context, pg: asyncpg.Connection[Any]
) -> None:
    settings = MonitorSettings(monitor_failure_min_jobs=4, monitor_failure_window=600)
    now = to_datetime(ctx.clock.now())
    await pg.execute("INSERT INTO tenants (id, name) VALUES ('t', 't')")

    async def job(kind: str, status: str, finished_ago: float) -> None:
        await pg.execute(
            """INSERT INTO jobs (id, tenant_id, type, queue, status, params, created_at, run_at,
                                 finished_at)
               VALUES ($1, 't', $2, 'control', $3, '{}', $4, $4, $4)""",
            uuid.uuid4(), kind, status, now - timedelta(seconds=finished_ago),
        )  # fmt: skip

    for status in ("failed", "failed", "succeeded", "succeeded", "cancelled"):
        await job("system.echo", status, 30)
    await job("system.echo", "failed", 3600)  # outside the window
    await job("system.sleep", "failed", 10)  # too few to judge
    collector = JobsCollector()
    ctx = dataclasses.replace(ctx, settings=settings)
    got = by_key(await collector.collect(ctx))
    assert got[("tgflow_job_failure_ratio", (("type", "system.echo"),))] == 0.5
    assert got[("tgflow_jobs_finished", (("type", "system.echo"),))] == 4
    assert got[("tgflow_jobs_failed", (("type", "system.sleep"),))] == 1
    assert ("tgflow_job_failure_ratio", (("type", "system.sleep"),)) not in got
    # The archive is read at most once a minute.
    await job("system.echo", "failed", 5)
    ctx.clock.advance(30)  # type: ignore[attr-defined]
    assert (
        by_key(await collector.collect(ctx))[("tgflow_jobs_finished", (("type", "system.echo"),))]
        == 4
    )
    ctx.clock.advance(30)  # type: ignore[attr-defined]
    assert (
        by_key(await collector.collect(ctx))[("tgflow_jobs_finished", (("type", "system.echo"),))]
        == 5
    )


@pytest.fixture
async def probe_schema(
    database_url: str,
) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Connection[Any]]]:
    """A pool whose search path is a private schema, so the accounts table the tests make
    here can never meet the real one a later migration creates."""
    schema = f"probe_{uuid.uuid4().hex[:8]}"
    admin: asyncpg.Connection[Any] = await asyncpg.connect(database_url)
    await admin.execute(f"CREATE SCHEMA {schema}")
    pool = await asyncpg.create_pool(
        database_url, min_size=1, max_size=2, server_settings={"search_path": schema}
    )
    assert pool is not None
    await admin.execute(f"SET search_path = {schema}")
    try:
        yield pool, admin
    finally:
        await pool.close()
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


async def test_accounts_are_absent_until_the_table_exists(
    ctx: Context, probe_schema: tuple[asyncpg.Pool, asyncpg.Connection[Any]]
) -> None:
    pool, admin = probe_schema
    probe = dataclasses.replace(ctx, db=pool)
    with pytest.raises(SourceAbsent, match="accounts table"):
        await AccountsCollector().collect(probe)
    await admin.execute("CREATE TABLE accounts (id int, state text)")
    await admin.execute("INSERT INTO accounts VALUES (1, 'active'), (2, 'active'), (3, 'disabled')")
    got = by_key(await AccountsCollector().collect(probe))
    assert got == {
        ("tgflow_accounts", (("state", "active"),)): 2,
        ("tgflow_accounts", (("state", "disabled"),)): 1,
    }  # no flood_until column: no flood series, rather than a made-up zero
    await admin.execute("ALTER TABLE accounts ADD COLUMN flood_until timestamptz")
    now = to_datetime(ctx.clock.now())
    await admin.execute(
        "UPDATE accounts SET flood_until = $1 WHERE id = 1", now + timedelta(minutes=7)
    )
    await admin.execute(
        "UPDATE accounts SET flood_until = $1 WHERE id = 2", now + timedelta(minutes=2)
    )
    got = by_key(await AccountsCollector().collect(probe))
    assert got[("tgflow_flood_waits_long", ())] == 1


async def test_dead_letters_absent_then_counted(ctx: Context, redis: Redis) -> None:
    collector = DeadLettersCollector()
    with pytest.raises(SourceAbsent, match=DEAD_LETTER_KEY):
        await collector.collect(ctx)
    await redis.xadd(DEAD_LETTER_KEY, {"job": "1"})
    await redis.xadd(DEAD_LETTER_KEY, {"job": "2"})
    assert by_key(await collector.collect(ctx)) == {("tgflow_dead_letters", ()): 2}
    await redis.delete(DEAD_LETTER_KEY)
    await redis.rpush(DEAD_LETTER_KEY, "a")  # type: ignore[misc]
    assert by_key(await collector.collect(ctx)) == {("tgflow_dead_letters", ()): 1}
    await redis.delete(DEAD_LETTER_KEY)
    await redis.set(DEAD_LETTER_KEY, "oops")
    with pytest.raises(TypeError, match="not a list"):
        await collector.collect(ctx)


async def test_dead_letters_counts_the_workers_sorted_set(ctx: Context, redis: Redis) -> None:
    """The set workers keep: real members are counted, and requeuing the last one leaves
    the key (with its placeholder) so the source does not turn absent."""
    store = JobStore(redis, status_ttl=600, idempotency_ttl=600, shards=4)
    first, second = [await breakable.submit(store, job_type="system.echo") for _ in range(2)]
    for job_id in (first, second):
        await breakable.fail_in_store(store, job_id)
    collector = DeadLettersCollector()
    assert by_key(await collector.collect(ctx)) == {("tgflow_dead_letters", ()): 2}
    for job_id in (first, second):
        record = await store.get(job_id)
        assert record is not None
        env = Envelope(
            id=job_id,
            type=record.type,
            tenant=record.tenant,
            params=record.params,
            timeout=5,
            created_at=record.created_at,
            run_at=utcnow(),
        )
        assert await store.requeue(record, env) == "requeued"
    assert by_key(await collector.collect(ctx)) == {("tgflow_dead_letters", ()): 0}
    assert await redis.type(DEAD_LETTER_KEY) == "zset"


async def test_shard_gaps_need_an_announced_shard_count(ctx: Context, redis: Redis) -> None:
    collector = ShardsCollector()
    await registry.announce(redis, "w1", {"id": "w1", "kind": "worker"}, ttl=30)
    with pytest.raises(SourceAbsent, match="shard count"):
        await collector.collect(ctx)
    await registry.announce(redis, "w1", {"id": "w1", "kind": "worker", "shards": "4"}, ttl=30)
    await redis.set(shard_lease_key(0), "w1")
    await redis.set(shard_lease_key(2), "w1")
    got = await collector.collect(ctx)
    assert by_key(got) == {("tgflow_shards_total", ()): 4, ("tgflow_shards_unowned", ()): 2}
    assert got.details["unowned"] == [1, 3]


GATEWAY_METRICS = """\
# HELP tgflow_db_pool_in_use Connections checked out.
# TYPE tgflow_db_pool_in_use gauge
tgflow_db_pool_in_use{role="gateway"} 3.0
# HELP tgflow_db_pool_max Pool size limit.
# TYPE tgflow_db_pool_max gauge
tgflow_db_pool_max{role="gateway"} 4.0
# HELP tgflow_queue_depth Jobs waiting or running in a queue.
# TYPE tgflow_queue_depth gauge
tgflow_queue_depth{queue="ai"} 7.0
# HELP tgflow_http_requests_total HTTP requests served.
# TYPE tgflow_http_requests_total counter
tgflow_http_requests_total{method="GET",route="/v1/jobs",status="200"} 90.0
tgflow_http_requests_total{method="GET",route="/v1/jobs",status="503"} 4.0
tgflow_http_requests_total{method="POST",route="/v1/jobs",status="500"} 1.0
tgflow_http_requests_created{method="GET",route="/v1/jobs",status="200"} 1.7e9
# HELP tgflow_http_request_duration_seconds HTTP request latency.
# TYPE tgflow_http_request_duration_seconds histogram
tgflow_http_request_duration_seconds_bucket{le="2.5",method="GET",route="/v1/jobs"} 80.0
tgflow_http_request_duration_seconds_bucket{le="5.0",method="GET",route="/v1/jobs"} 91.0
tgflow_http_request_duration_seconds_bucket{le="10.0",method="GET",route="/v1/jobs"} 93.0
tgflow_http_request_duration_seconds_bucket{le="+Inf",method="GET",route="/v1/jobs"} 94.0
tgflow_http_request_duration_seconds_count{method="GET",route="/v1/jobs"} 94.0
tgflow_http_request_duration_seconds_sum{method="GET",route="/v1/jobs"} 120.0
tgflow_http_request_duration_seconds_bucket{le="5.0",method="POST",route="/v1/jobs"} 0.0
tgflow_http_request_duration_seconds_bucket{le="+Inf",method="POST",route="/v1/jobs"} 1.0
# HELP tgflow_telegram_reconnects_total Reconnect attempts.
# TYPE tgflow_telegram_reconnects_total counter
"""


async def test_scrape_discovers_instances_and_derives_series(ctx: Context, redis: Redis) -> None:
    async def metrics(_: Request) -> Response:
        return PlainTextResponse(GATEWAY_METRICS)

    app = Starlette(routes=[Route("/metrics", metrics)])
    async with serving(app) as url:
        await registry.announce(
            redis,
            "gw-1",
            {"id": "gw-1", "kind": "gateway", "metrics_url": url + "/metrics"},
            ttl=30,
        )
        await registry.announce(
            redis,
            "w-9",
            {"id": "w-9", "kind": "worker", "metrics_url": "http://127.0.0.1:1/m"},
            ttl=30,
        )
        await registry.announce(redis, "x", {"id": "x", "kind": "cli"}, ttl=30)  # nothing to scrape
        got = await ScrapeCollector(skip={"tgflow_queue_depth"}).collect(ctx)
    values = by_key(got)
    gw = (("instance", "gw-1"), ("kind", "gateway"))
    assert values[("tgflow_db_pool_utilization", (*gw, ("role", "gateway")))] == 0.75
    assert values[("tgflow_db_pool_free", (*gw, ("role", "gateway")))] == 1
    assert values[("tgflow_http_5xx_total", gw)] == 5
    assert values[("tgflow_http_slow_requests_total", gw)] == 3 + 1  # above 5 s, both routes
    assert values[("tgflow_monitor_scrape_up", gw)] == 1
    # A counter family with no samples yet: a real zero, so the rule has data.
    assert values[("tgflow_telegram_instance_reconnects_total", gw)] == 0
    assert values[("tgflow_monitor_scrape_up", (("instance", "w-9"), ("kind", "worker")))] == 0
    passthrough = ("tgflow_http_requests_total", (("instance", "gw-1"), ("kind", "gateway"),
                   ("method", "GET"), ("route", "/v1/jobs"), ("status", "200")))  # fmt: skip
    assert values[passthrough] == 90
    assert not any(name == "tgflow_queue_depth" for name, _ in values)  # ours wins
    assert not any(name.endswith("_created") for name, _ in values)
    targets = {t["id"]: t for t in got.details["targets"]}
    assert targets["gw-1"]["up"] is True
    assert targets["w-9"]["up"] is False
    assert "ConnectError" in targets["w-9"]["error"]


class _Hang:
    name = "hang"
    produces = frozenset({"never"})

    async def collect(self, ctx: Context) -> Collected:
        await asyncio.sleep(30)
        raise AssertionError("unreachable")


async def test_sampler_records_ok_absent_error_and_timeout(ctx: Context) -> None:
    ok = StaticCollector("ok", {"up_metric"})
    ok.set("up_metric", 1)
    broken = StaticCollector("broken", {"b"})
    broken.failure = ConnectionError("refused")
    absent = StaticCollector("absent", {"a"})
    absent.failure = SourceAbsent("no table")
    store = SeriesStore(retention=600)
    sampler = Sampler([ok, broken, absent, _Hang()], ctx, store, timeout=0.2)
    await sampler.sample_once(100)
    states = {n: (s.state, s.error) for n, s in sampler.status.items()}
    assert states == {
        "ok": ("ok", None),
        "broken": ("error", "ConnectionError: refused"),
        "absent": ("absent", "no table"),
        "hang": ("error", "timed out after 0.2s"),
    }
    sources = sampler.sources()
    assert set(sources.failed) == {"broken", "hang"}
    assert sources.absent == {"absent": "no table"}
    assert sources.produces["b"] == "broken"
    families = {f.name: f for f in sampler.collect()}
    up = {s.labels["collector"]: s.value for s in families["tgflow_monitor_collector_up"].samples}
    assert up == {"ok": 1.0, "broken": 0.0, "absent": 1.0, "hang": 0.0}
    present = families["tgflow_monitor_collector_source_present"].samples
    assert {s.labels["collector"]: s.value for s in present}["absent"] == 0.0
    assert families["up_metric"].samples[0].value == 1
    took = {
        s.labels["collector"]: s.value
        for s in families["tgflow_monitor_collector_duration_seconds"].samples
    }
    assert took["hang"] >= 0.2 > took["ok"]  # each collector's own time
    # The collector recovers: its state clears, and series it stopped reporting go stale.
    ok.samples = []
    broken.failure = None
    await sampler.sample_once(115)
    assert sampler.status["broken"].state == "ok"
    assert list(store.current()) == []


async def test_default_collectors_run_against_the_real_services(ctx: Context, redis: Redis) -> None:
    await registry.announce(redis, "w1", {"id": "w1", "kind": "worker"}, ttl=30)
    collectors = default_collectors(MonitorSettings(), lambda: 3)
    sampler = Sampler(collectors, ctx, SeriesStore(retention=600), timeout=5)
    await sampler.sample_once(ctx.clock.now())
    states = {n: s.state for n, s in sampler.status.items()}
    assert states == {
        "postgres": "ok", "redis": "ok", "system": "ok", "queues": "ok", "workers": "ok",
        "shards": "absent", "deadletters": "absent", "webhooks": "ok", "jobs": "ok",
        "accounts": "ok", "alerts": "ok", "scrape": "ok",
    }  # fmt: skip
    assert sampler.latest["alerts"] == [
        Sample("tgflow_alerts_firing", 3.0, {}, "Alerts firing now.")
    ]


async def test_accounts_and_long_flood_waits_fire_the_shipped_rules(
    ctx: Context, pg: asyncpg.Connection[Any]
) -> None:
    """The real accounts table, the real collector and the shipped rules, together."""
    now = to_datetime(ctx.clock.now())
    await pg.execute("INSERT INTO tenants (id, name) VALUES ('t', 't')")
    for state, flood in (
        ("active", None),
        ("disabled", None),
        ("flood_wait", 600),
        ("flood_wait", 60),
    ):
        await pg.execute(
            "INSERT INTO accounts (id, tenant_id, state, flood_until) VALUES ($1, 't', $2, $3)",
            uuid.uuid4(), state, now + timedelta(seconds=flood) if flood else None,
        )  # fmt: skip
    sampler = Sampler([AccountsCollector()], ctx, SeriesStore(retention=600), timeout=5)
    await sampler.sample_once(ctx.clock.now())
    assert by_key(Collected(sampler.latest["accounts"])) == {
        ("tgflow_accounts", (("state", "active"),)): 1,
        ("tgflow_accounts", (("state", "disabled"),)): 1,
        ("tgflow_accounts", (("state", "flood_wait"),)): 2,
        ("tgflow_flood_waits_long", ()): 1,
    }
    tracker = Tracker()
    for rule in load_rules():
        if rule.name in ("AccountDisabled", "FloodWaitLong"):
            result = evaluate_rule(rule, sampler.store, sampler.sources(), ctx.clock.now())
            tracker.apply(rule, result, ctx.clock.now())
    firing = {a.rule: a.refresh().annotations["summary"] for a in tracker.open.values()}
    assert firing == {
        "AccountDisabled": "1 Telegram accounts are disabled",
        "FloodWaitLong": "1 accounts wait out a flood wait longer than 5 minutes",
    }


async def test_webhooks_pending_in_redis_and_given_up_in_postgres(
    ctx: Context, redis: Redis, pg: asyncpg.Connection[Any]
) -> None:
    await redis.zadd(WEBHOOK_DUE, {"job-a": 1.0, "job-b": 2.0})
    for status in ("failed", "failed", "delivered"):
        await pg.execute(
            """INSERT INTO webhook_deliveries (job_id, tenant_id, delivery_id, url, status,
                   attempts, created_at)
               VALUES ($1, 't', $2, 'https://h.example/x', $3, 8, now())""",
            uuid.uuid4(),
            uuid.uuid4(),
            status,
        )
    got = await WebhooksCollector().collect(ctx)
    assert by_key(got) == {
        ("tgflow_webhooks_pending", ()): 2,
        ("tgflow_webhook_deliveries_failed", ()): 2,
    }
