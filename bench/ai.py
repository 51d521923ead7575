"""AI job benchmark: ai.complete against the sandbox model endpoint, next to bare httpx.

    .venv/bin/python bench/ai.py [--calls 300] [--jobs 600] [--latency-ms 100]

1. Overhead: one call at a time on an idle system, alternating a bare httpx POST to
   the sandbox's /v1/chat/completions (one keep-alive client, the same body the
   worker sends) with an ai.complete job (cache off) submitted over HTTP to a real
   gateway and run by a real worker. Job time comes from the job record
   (created_at -> finished_at: queue, worker and provider call; started_at ->
   finished_at: the worker's run alone). Overhead = job p50 - bare call p50.
2. Throughput: N ai.complete jobs (cache off) with the sandbox answering after a fixed
   latency, the provider's cluster-wide limit at 3 and then at 50, one worker process
   with 100 job slots. jobs/s = N / (last finished_at - first created_at); the ceiling
   is limit / latency. The peak number of overlapping provider calls is computed from
   each result's requested_at and latency_ms.

Everything (client, gateway, worker, sandbox, Redis, Postgres) shares one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import httpx
from redis.asyncio import Redis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.telegram import (  # noqa: E402
    add_service_args,
    cpu_seconds,
    free_port,
    fresh_database,
    service_env,
    until_final,
)
from shared.auth import mint_token  # noqa: E402
from shared.config import DEFAULT_SECRET  # noqa: E402

MODEL = "sandbox-extractive-1"
PROMPT = (
    "The harbour closed at noon because of the storm. Fishing boats stayed in the harbour. "
    "Children watched the storm from the old pier. The storm damaged two fishing boats."
)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait()


async def wait_http(url: str) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(300):
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


async def prepare(database_admin: str, redis_url: str) -> dict[str, str]:
    dsn = await fresh_database(database_admin, "tgflow_bench_ai")
    return service_env(dsn, redis_url)


class Stack:
    """A gateway and one worker process with a provider catalogue on the sandbox."""

    def __init__(self, env: dict[str, str], openai_url: str, limit: int, workers: int = 1) -> None:
        provider = {
            "name": "sandbox",
            "base_url": openai_url,
            "default_model": MODEL,
            "concurrency": limit,
        }
        self.env = {**env, "TGFLOW_AI_PROVIDERS": json.dumps([provider])}
        self.port = free_port()
        self.workers = workers
        self.procs: list[subprocess.Popen[bytes]] = []

    async def __aenter__(self) -> Stack:
        redis = Redis.from_url(self.env["TGFLOW_REDIS_URL"])
        await redis.flushdb()
        await redis.aclose()
        worker = ["services.cli.main", "worker", "--queues", "ai,control", "--concurrency", "100"]
        self.procs = [
            spawn(["services.cli.main", "gateway", "--port", str(self.port)], self.env),
            *(spawn(worker, self.env) for _ in range(self.workers)),
        ]
        try:
            await wait_http(f"http://127.0.0.1:{self.port}/readyz")
        except BaseException:
            stop(self.procs)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        stop(self.procs)


async def submit(session: aiohttp.ClientSession, prompt: str | None) -> str:
    """An ai.complete job (cache off), or a system.echo job without a prompt."""
    body: dict[str, Any] = {"type": "system.echo"}
    if prompt is not None:
        body = {"type": "ai.complete", "params": {"prompt": prompt, "cache": False}}
    async with session.post("/v1/jobs", json=body) as response:
        response.raise_for_status()
        job_id: str = (await response.json())["id"]
        return job_id


def session(port: int) -> aiohttp.ClientSession:
    headers = {"Authorization": f"Bearer {mint_token(DEFAULT_SECRET, 'bench')}"}
    return aiohttp.ClientSession(
        base_url=f"http://127.0.0.1:{port}",
        headers=headers,
        connector=aiohttp.TCPConnector(limit=50),
    )


async def overhead(env: dict[str, str], openai_url: str, calls: int) -> dict[str, float]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}
    bare: list[float] = []
    e2e: list[float] = []
    run: list[float] = []
    provider: list[float] = []
    echo: list[float] = []
    async with (
        Stack(env, openai_url, 3) as stack,
        session(stack.port) as http,
        httpx.AsyncClient() as direct,
    ):
        redis = Redis.from_url(env["TGFLOW_REDIS_URL"], decode_responses=True)
        for i in range(calls + 20):  # the first 20 of each warm up
            start = time.perf_counter()
            response = await direct.post(f"{openai_url}/chat/completions", json=body)
            response.raise_for_status()
            elapsed = (time.perf_counter() - start) * 1000
            job_id = await submit(http, PROMPT)
            (row,) = await until_final(redis, [job_id], interval=0.002)
            (echoed,) = await until_final(redis, [await submit(http, None)], interval=0.002)
            if i < 20:
                continue
            echo.append((int(echoed["finished_at"]) - int(echoed["created_at"])) / 1000)
            bare.append(elapsed)
            e2e.append((int(row["finished_at"]) - int(row["created_at"])) / 1000)
            run.append((int(row["finished_at"]) - int(row["started_at"])) / 1000)
            provider.append(json.loads(row["result"])["latency_ms"])
        await redis.aclose()
    return {
        "bare_p50": pct(bare, 0.5),
        "bare_p99": pct(bare, 0.99),
        "job_p50": pct(e2e, 0.5),
        "job_p99": pct(e2e, 0.99),
        "run_p50": pct(run, 0.5),
        "run_p99": pct(run, 0.99),
        "provider_p50": pct(provider, 0.5),
        "echo_p50": pct(echo, 0.5),
        "echo_p99": pct(echo, 0.99),
    }


def peak_overlap(rows: list[dict[str, str]]) -> int:
    edges = []
    for row in rows:
        result = json.loads(row["result"])
        start = datetime.fromisoformat(result["requested_at"])
        edges += [(start, 1), (start + timedelta(milliseconds=result["latency_ms"]), -1)]
    running = peak = 0
    for _, step in sorted(edges):
        running += step
        peak = max(peak, running)
    return peak


async def throughput(
    env: dict[str, str],
    openai_url: str,
    admin_url: str,
    limit: int,
    jobs: int,
    latency: int,
    workers: int,
    sandbox_pid: int,
) -> dict[str, float]:
    async with Stack(env, openai_url, limit, workers) as stack, session(stack.port) as http:
        redis = Redis.from_url(env["TGFLOW_REDIS_URL"], decode_responses=True)
        async with httpx.AsyncClient() as admin:
            await admin.post(f"{admin_url}/admin/ai/config", json={"latency_ms": latency})
        remaining = iter(range(jobs))
        ids: list[str] = []
        worker_pids = [p.pid for p in stack.procs[1:]]
        gateway_pid = stack.procs[0].pid
        cpu = [cpu_seconds(worker_pids), cpu_seconds([gateway_pid]), cpu_seconds([sandbox_pid])]

        async def client() -> None:
            for i in remaining:
                ids.append(await submit(http, f"Job {i}. {PROMPT}"))

        await asyncio.gather(*(client() for _ in range(20)))
        rows = await until_final(redis, ids)
        used = [
            cpu_seconds(worker_pids) - cpu[0],
            cpu_seconds([gateway_pid]) - cpu[1],
            cpu_seconds([sandbox_pid]) - cpu[2],
        ]
        await redis.aclose()
    span_us = max(int(r["finished_at"]) for r in rows) - min(int(r["created_at"]) for r in rows)
    return {
        "limit": limit,
        "jobs": jobs,
        "jobs_per_s": jobs / (span_us / 1e6),
        "ceiling": limit / (latency / 1000),
        "peak": peak_overlap(rows),
        "attempts": max(int(r["attempts"]) for r in rows),
        "workers": workers,
        "worker_cpu_ms": used[0] / jobs * 1000,
        "gateway_cpu_ms": used[1] / jobs * 1000,
        "sandbox_cpu_ms": used[2] / jobs * 1000,
    }


async def main(args: argparse.Namespace) -> None:
    env = await prepare(args.database, args.redis)
    admin_port = free_port()
    sandbox = spawn(
        ["services.sandbox.cli", "--port", "0", "--admin-port", str(admin_port)], dict(os.environ)
    )
    admin_url = f"http://127.0.0.1:{admin_port}"
    openai_url = f"{admin_url}/v1"
    try:
        await wait_http(f"{admin_url}/admin/health")
        o = await overhead(env, openai_url, args.calls)
        results = [
            await throughput(
                env, openai_url, admin_url, limit, args.jobs, args.latency_ms, workers, sandbox.pid
            )
            for limit, workers in ((3, 1), (50, 1), (50, 2))
        ]
    finally:
        stop([sandbox])
    print(f"\nOverhead, {args.calls} calls one at a time (ms):")
    print(f"  bare httpx call          p50 {o['bare_p50']:7.2f}   p99 {o['bare_p99']:7.2f}")
    print(f"  ai.complete, created->finished p50 {o['job_p50']:7.2f}   p99 {o['job_p99']:7.2f}")
    print(f"  ai.complete, started->finished p50 {o['run_p50']:7.2f}   p99 {o['run_p99']:7.2f}")
    print(f"  provider call inside the job   p50 {o['provider_p50']:7.2f}")
    print(f"  system.echo, created->finished p50 {o['echo_p50']:7.2f}   p99 {o['echo_p99']:7.2f}")
    print(f"  added at p50: {o['job_p50'] - o['bare_p50']:.2f} ms end to end, ", end="")
    print(f"{o['run_p50'] - o['bare_p50']:.2f} ms in the worker; ", end="")
    print(f"beyond a system.echo job: {o['job_p50'] - o['echo_p50'] - o['bare_p50']:.2f} ms")
    print(f"\nThroughput, sandbox latency {args.latency_ms} ms, {args.jobs} jobs:")
    for r in results:
        print(
            f"  limit {r['limit']:>2}, {r['workers']} worker(s): {r['jobs_per_s']:7.1f} jobs/s "
            f"(ceiling {r['ceiling']:.0f}, {r['jobs_per_s'] / r['ceiling']:.0%}), "
            f"peak concurrent calls {r['peak']}, max attempts {r['attempts']}; CPU ms per job: "
            f"workers {r['worker_cpu_ms']:.1f}, gateway {r['gateway_cpu_ms']:.1f}, "
            f"sandbox {r['sandbox_cpu_ms']:.1f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="calls for the overhead run")
    parser.add_argument("--jobs", type=int, default=600, help="jobs per throughput run")
    parser.add_argument("--latency-ms", type=int, default=100, help="sandbox model latency")
    add_service_args(parser, 6)
    asyncio.run(main(parser.parse_args()))
