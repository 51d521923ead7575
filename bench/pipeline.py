"""End-to-end pipeline benchmark: tgflow against bare ARQ on the same Redis, in one run.

    .venv/bin/python bench/pipeline.py [--jobs 2000] [--clients 50] [--idle 100] [--batch 100]

tgflow: N system.echo jobs submitted over HTTP by K concurrent clients to a real
gateway process, run by a real worker process (concurrency 100), timed from the job
records (created_at -> started_at -> finished_at, microseconds). Then, one at a time
on an otherwise idle system, the enqueue-to-start latency. A second tgflow run submits
the same N jobs with POST /v1/jobs:batch, B jobs per request from K/10 clients.

Bare ARQ: a no-op function in a worker process, jobs enqueued with ArqRedis by K
concurrent tasks, timed from ARQ's own job results; once with ARQ defaults
(poll_delay 0.5 s, max_jobs 10) and once tuned (poll_delay 0.01 s, max_jobs 100).
Both use JSON serialisation, so only the queue mechanics differ.

Everything (client, gateway, worker, Redis, Postgres) shares one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import aiohttp
from arq import Worker
from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.asyncio import Redis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.telegram import (  # noqa: E402
    add_service_args,
    free_port,
    fresh_database,
    service_env,
    until_final,
)
from shared import serialization  # noqa: E402
from shared.auth import mint_token  # noqa: E402
from shared.config import DEFAULT_SECRET  # noqa: E402

ARQ_QUEUE = "bench:arq"
# A random pause before each idle job, so that a polling worker is met at a random phase
# of its poll cycle rather than right after the poll that finished the previous job.
IDLE_JITTER = 0.5
PROFILES = {"defaults": (0.5, 10), "tuned": (0.01, 100)}


@dataclass
class Result:
    name: str
    jobs: int
    throughput: float
    p50_ms: float
    p99_ms: float
    idle_p50_ms: float
    idle_p99_ms: float


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def noop(ctx: dict[str, Any]) -> None:
    return None


def run_arq_worker(redis_url: str, profile: str) -> None:
    poll_delay, max_jobs = PROFILES[profile]
    worker = Worker(
        functions=[noop],
        queue_name=ARQ_QUEUE,
        redis_settings=RedisSettings.from_dsn(redis_url),
        poll_delay=poll_delay,
        max_jobs=max_jobs,
        job_serializer=serialization.dumps,
        job_deserializer=serialization.loads,
        log_results=False,
    )
    worker.run()


async def arq_results(pool: ArqRedis) -> list[Any]:
    return [r for r in await pool.all_job_results() if r.function == "noop"]


async def bench_arq(redis_url: str, profile: str, jobs: int, clients: int, idle: int) -> Result:
    pool = await create_pool(
        RedisSettings.from_dsn(redis_url),
        job_serializer=serialization.dumps,
        job_deserializer=serialization.loads,
    )
    await pool.flushdb()
    worker = subprocess.Popen(
        [sys.executable, __file__, "--arq-worker", profile, "--redis", redis_url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await asyncio.sleep(1.0)
        await _arq_burst(pool, 100, clients)  # warm-up
        await pool.flushdb()
        await _arq_burst(pool, jobs, clients)
        loaded = await arq_results(pool)
        lat = [(r.start_time - r.enqueue_time).total_seconds() * 1000 for r in loaded]
        first = min(r.enqueue_time for r in loaded)
        last = max(r.finish_time for r in loaded)
        throughput = len(loaded) / (last - first).total_seconds()
        await pool.flushdb()
        idle_lat = []
        for _ in range(idle):
            await asyncio.sleep(random.uniform(0, IDLE_JITTER))
            job = await pool.enqueue_job("noop", _queue_name=ARQ_QUEUE)
            assert job is not None
            while (info := await job.result_info()) is None:
                await asyncio.sleep(0.001)
            idle_lat.append((info.start_time - info.enqueue_time).total_seconds() * 1000)
        return Result(
            f"ARQ {profile}",
            len(loaded),
            throughput,
            pct(lat, 0.5),
            pct(lat, 0.99),
            pct(idle_lat, 0.5),
            pct(idle_lat, 0.99),
        )
    finally:
        worker.terminate()
        worker.wait()
        await pool.aclose()


async def _arq_burst(pool: ArqRedis, jobs: int, clients: int) -> None:
    remaining = iter(range(jobs))

    async def client() -> None:
        for _ in remaining:
            await pool.enqueue_job("noop", _queue_name=ARQ_QUEUE)

    await asyncio.gather(*(client() for _ in range(clients)))
    while await pool.zcard(ARQ_QUEUE):
        await asyncio.sleep(0.02)
    while len(await arq_results(pool)) < jobs:
        await asyncio.sleep(0.02)


async def bench_tgflow(
    env: dict[str, str], jobs: int, clients: int, idle: int, batch: int = 1
) -> Result:
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", *args],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for args in (["gateway", "--port", str(port)], ["worker", "--concurrency", "100"])
    ]
    redis = Redis.from_url(env["TGFLOW_REDIS_URL"], decode_responses=True)
    headers = {"Authorization": f"Bearer {mint_token(DEFAULT_SECRET, 'bench')}"}
    # aiohttp, not httpx: httpx's pool stops scaling well before 50 concurrent connections.
    connector = aiohttp.TCPConnector(limit=clients)
    try:
        async with aiohttp.ClientSession(
            base_url=f"http://127.0.0.1:{port}", headers=headers, connector=connector
        ) as client:
            await _wait_ready(client)
            await _tgflow_burst(client, redis, 100, clients, batch)  # warm-up
            rows = await _tgflow_burst(client, redis, jobs, clients, batch)
            lat = [(int(r["started_at"]) - int(r["created_at"])) / 1000 for r in rows]
            span_us = max(int(r["finished_at"]) for r in rows) - min(
                int(r["created_at"]) for r in rows
            )
            throughput = len(rows) / (span_us / 1e6)
            idle_lat = []
            for _ in range(idle):
                await asyncio.sleep(random.uniform(0, IDLE_JITTER))
                async with client.post("/v1/jobs", json={"type": "system.echo"}) as response:
                    job_id = (await response.json())["id"]
                while not (row := await redis.hgetall(f"tgflow:job:{job_id}")).get("finished_at"):
                    await asyncio.sleep(0.001)
                idle_lat.append((int(row["started_at"]) - int(row["created_at"])) / 1000)
        return Result(
            "tgflow" if batch == 1 else f"tgflow batch{batch}",
            len(rows),
            throughput,
            pct(lat, 0.5),
            pct(lat, 0.99),
            pct(idle_lat, 0.5),
            pct(idle_lat, 0.99),
        )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait()
        await redis.aclose()


async def _wait_ready(client: aiohttp.ClientSession) -> None:
    for _ in range(300):
        try:
            async with client.get("/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("gateway did not become ready")


async def _tgflow_burst(
    client: aiohttp.ClientSession, redis: Redis, jobs: int, clients: int, batch: int = 1
) -> list[dict[str, str]]:
    """Submit ``jobs`` from ``clients`` connections: one per POST, or ``batch`` per
    POST /v1/jobs:batch."""
    remaining = iter(range(0, jobs, batch))
    ids: list[str] = []

    async def submit() -> None:
        for first in remaining:
            bodies = [
                {"type": "system.echo", "params": {"message": str(i)}}
                for i in range(first, min(jobs, first + batch))
            ]
            if batch == 1:
                async with client.post("/v1/jobs", json=bodies[0]) as response:
                    response.raise_for_status()
                    ids.append((await response.json())["id"])
                continue
            async with client.post("/v1/jobs:batch", json={"jobs": bodies}) as response:
                response.raise_for_status()
                ids.extend(item["id"] for item in (await response.json())["items"])

    await asyncio.gather(*(submit() for _ in range(clients)))
    return await until_final(redis, ids)


async def prepare(database_admin: str, redis_url: str) -> dict[str, str]:
    dsn = await fresh_database(database_admin, "tgflow_bench")
    redis = Redis.from_url(redis_url)
    await redis.flushdb()
    await redis.aclose()
    return service_env(dsn, redis_url)


def report(results: list[Result]) -> None:
    print(
        f"\n{'':16}{'jobs':>6}{'jobs/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'idle p50':>10}{'idle p99':>10}"
    )
    for r in results:
        print(
            f"{r.name:16}{r.jobs:>6}{r.throughput:>10.0f}{r.p50_ms:>9.1f}{r.p99_ms:>9.1f}"
            f"{r.idle_p50_ms:>10.2f}{r.idle_p99_ms:>10.2f}"
        )
    tgflow = [r for r in results if r.name.startswith("tgflow")]
    for tg in tgflow:
        for base in results:
            if base in tgflow:
                continue
            print(
                f"{tg.name} / {base.name}: throughput x{tg.throughput / base.throughput:.2f}, "
                f"idle start p50 x{tg.idle_p50_ms / base.idle_p50_ms:.2f}"
            )
    print("latency columns: enqueue (created) to start; 'idle' = one job at a time")


async def main(args: argparse.Namespace) -> None:
    env = await prepare(args.database, args.redis)
    results = [await bench_tgflow(env, args.jobs, args.clients, args.idle)]
    if args.batch > 1:
        clients = max(1, args.clients // 10)
        results.append(await bench_tgflow(env, args.jobs, clients, 0, batch=args.batch))
    results.append(await bench_arq(args.redis, "defaults", args.jobs, args.clients, args.idle))
    results.append(await bench_arq(args.redis, "tuned", args.jobs, args.clients, args.idle))
    report(results)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--idle", type=int, default=100, help="jobs for the idle latency runs")
    parser.add_argument(
        "--batch", type=int, default=100, help="also submit this many per POST /v1/jobs:batch"
    )
    add_service_args(parser, 8)
    parser.add_argument("--arq-worker", choices=sorted(PROFILES), help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.arq_worker:
        run_arq_worker(cli.redis, cli.arq_worker)
    else:
        asyncio.run(main(cli))
