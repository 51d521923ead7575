"""Scaling and recovery with several worker processes, against the sandbox DC.

    .venv/bin/python bench/scaling.py [--accounts 100] [--sends 3000] [--workers 1,2,4]

1. Throughput: for each worker count, a gateway and that many worker processes share
   the Telegram shards (the run waits until every shard is held and shares are even);
   M telegram.send_message jobs over the accounts are submitted with the batch API, and
   jobs per second is measured from the first job created to the last finished, side by
   side with the one-worker run. All processes share this machine's cores.
2. Recovery: two workers under a steady stream of sends; one is SIGKILLed. Reported:
   how long until every shard is held again, until the first of its interrupted jobs
   runs again, until all of them have finished, and until every account it had
   connected is connected by the survivor.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import Any

import aiohttp
import psutil
from redis.asyncio import Redis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.telegram import (  # noqa: E402
    add_service_args,
    free_port,
    fresh_database,
    job_rows,
    sandbox_env,
    spawn,
    store_accounts,
    until_final,
    wait_http,
)
from services.sandbox.admin_client import SandboxAdmin  # noqa: E402
from shared.auth import mint_token  # noqa: E402
from shared.config import DEFAULT_SECRET  # noqa: E402
from shared.telegram_keys import presence_key  # noqa: E402

SHARDS = 64


class Cluster:
    """A gateway and N workers; helpers to wait for balance and to submit sends."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.port = free_port()
        self.gateway = spawn("gateway", "--port", str(self.port), env=env)
        self.workers: list[subprocess.Popen[bytes]] = []
        token = mint_token(DEFAULT_SECRET, "bench", scopes=["jobs:read", "jobs:write"])
        ops = mint_token(DEFAULT_SECRET, "ops", scopes=["monitoring:read"])
        self.headers = {"Authorization": f"Bearer {token}"}
        self.ops = {"Authorization": f"Bearer {ops}"}
        self.base = f"http://127.0.0.1:{self.port}"

    def add_worker(self, name: str) -> subprocess.Popen[bytes]:
        env = {**self.env, "TGFLOW_INSTANCE_NAME": name}
        proc = spawn("worker", "--concurrency", "200", env=env)
        self.workers.append(proc)
        return proc

    async def workers_view(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        async with http.get(f"{self.base}/v1/workers", headers=self.ops) as response:
            body: dict[str, Any] = await response.json()
            return body

    async def balanced(self, http: aiohttp.ClientSession, count: int, timeout: float = 60) -> float:
        """Seconds until ``count`` workers hold every shard in even shares."""
        start = time.perf_counter()
        share = -(-SHARDS // count)
        while time.perf_counter() - start < timeout:
            view = await self.workers_view(http)
            held = [len(w["shards"]) for w in view["workers"]]
            if (
                len(held) == count
                and not view["unowned_shards"]
                and sum(held) == SHARDS
                and max(held) <= share
            ):
                return time.perf_counter() - start
            await asyncio.sleep(0.1)
        raise RuntimeError(f"not balanced over {count} workers: {await self.workers_view(http)}")

    async def submit(
        self, http: aiohttp.ClientSession, ids: list[str], first: int, count: int
    ) -> list[str]:
        jobs = [
            {
                "type": "telegram.send_message",
                "params": {"account_id": ids[n % len(ids)], "peer": "me", "text": f"s {n}"},
            }
            for n in range(first, first + count)
        ]
        out: list[str] = []
        for at in range(0, len(jobs), 100):
            async with http.post(
                f"{self.base}/v1/jobs:batch",
                json={"jobs": jobs[at : at + 100]},
                headers=self.headers,
            ) as response:
                response.raise_for_status()
                out += [item["id"] for item in (await response.json())["items"]]
        return out

    def stop(self) -> None:
        for proc in [*self.workers, self.gateway]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self.workers, self.gateway]:
            proc.wait()


async def throughput(env: dict[str, str], ids: list[str], workers: int, sends: int) -> float:
    cluster = Cluster(env)
    redis = Redis.from_url(env["TGFLOW_REDIS_URL"], decode_responses=True)
    try:
        for n in range(workers):
            cluster.add_worker(f"w{n}")
        await wait_http(f"{cluster.base}/healthz")
        async with aiohttp.ClientSession() as http:
            await cluster.balanced(http, workers)
            await cluster.submit(http, ids, 0, 200)  # warm up: every account connected
            job_ids = await cluster.submit(http, ids, 200, sends)
        rows = await until_final(redis, job_ids)
        span = max(int(r["finished_at"]) for r in rows) - min(int(r["created_at"]) for r in rows)
        return len(rows) / (span / 1e6)
    finally:
        cluster.stop()
        await redis.aclose()
        await _reset(env)


async def recovery(env: dict[str, str], ids: list[str]) -> dict[str, Any]:
    cluster = Cluster(env)
    redis = Redis.from_url(env["TGFLOW_REDIS_URL"], decode_responses=True)
    try:
        doomed = cluster.add_worker("doomed")
        cluster.add_worker("survivor")
        await wait_http(f"{cluster.base}/healthz")
        async with aiohttp.ClientSession() as http:
            await cluster.balanced(http, 2)
            await cluster.submit(http, ids, 0, len(ids))  # every account connected somewhere
            await asyncio.sleep(1.0)
            theirs = [a for a in ids if await redis.hget(presence_key(a), "worker") == "doomed"]
            stream: list[str] = []
            stop = asyncio.Event()

            async def steady() -> None:
                """Every account gets a send about every 0.2 s, before and after the kill."""
                n = len(ids)
                while not stop.is_set():
                    stream.extend(await cluster.submit(http, ids, n, len(ids)))
                    n += len(ids)
                    await asyncio.sleep(0.2)

            feeding = asyncio.create_task(steady())
            await asyncio.sleep(2.0)
            running = {r["id"]: r for r in await job_rows(redis, list(stream))}
            doomed.send_signal(signal.SIGKILL)
            killed = time.time()
            interrupted = [
                j for j, r in running.items()
                if r.get("worker") == "doomed" and r.get("status") == "running"
            ]  # fmt: skip
            shards_back = connected = None
            while shards_back is None or connected is None:
                now = time.time() - killed
                if shards_back is None:
                    view = await cluster.workers_view(http)
                    live = [w for w in view["workers"] if w["id"] == "survivor"]
                    if live and len(live[0]["shards"]) == SHARDS:
                        shards_back = now
                if connected is None:
                    owners = [await redis.hget(presence_key(a), "worker") for a in theirs]
                    if all(o == "survivor" for o in owners):
                        connected = now
                if now > 120:
                    raise RuntimeError("no recovery within two minutes")
                await asyncio.sleep(0.05)
            stop.set()
            await feeding
        rows = {r["id"]: r for r in await until_final(redis, list(stream))}
        again = [rows[j] for j in interrupted if rows[j].get("worker") == "survivor"]
        rerun = [int(r["started_at"]) / 1e6 - killed for r in again]
        done = [int(r["finished_at"]) / 1e6 - killed for r in again]
        return {
            "interrupted_jobs": len(interrupted),
            "accounts_moved": len(theirs),
            "shards_held_again_s": shards_back,
            "accounts_connected_again_s": connected,
            "interrupted_jobs_rerun_s (first, last)": (min(rerun), max(rerun)) if rerun else None,
            "interrupted_jobs_done_s (last)": max(done) if done else None,
        }
    finally:
        cluster.stop()
        await redis.aclose()


async def _reset(env: dict[str, str]) -> None:
    """Forget queues, jobs and leases between runs (accounts stay in Postgres)."""
    redis = Redis.from_url(env["TGFLOW_REDIS_URL"])
    await redis.flushdb()
    await redis.aclose()


async def main(args: argparse.Namespace) -> None:
    dsn = await fresh_database(args.database, "tgflow_bench_scale")
    mt_port, admin_port = free_port(), free_port()
    env = {**sandbox_env(dsn, args.redis, mt_port, args.accounts), "TGFLOW_HEARTBEAT_SECONDS": "1"}
    await _reset(env)
    sandbox = spawn("sandbox", "--port", str(mt_port), "--admin-port", str(admin_port), env=env)
    try:
        admin_url = f"http://127.0.0.1:{admin_port}"
        await wait_http(f"{admin_url}/admin/server")
        async with SandboxAdmin(admin_url) as admin:
            created = [await admin.create_account() for _ in range(args.accounts)]
        ids = await store_accounts(env, [(c["user_id"], c["session_string"]) for c in created])
        counts = [int(n) for n in args.workers.split(",")]
        rates = {n: await throughput(env, ids, n, args.sends) for n in counts}
        print(f"send jobs over {args.accounts} accounts, {args.sends} per run (batch submit):")
        for n, rate in rates.items():
            print(f"  {n} worker(s): {rate:8.0f} jobs/s   x{rate / rates[counts[0]]:.2f}")
        print(f"host: {psutil.cpu_count()} CPUs shared by sandbox, gateway, workers and client")
        result = await recovery(env, ids)
        print("recovery after SIGKILL of one of two workers:")
        for name, value in result.items():
            if isinstance(value, tuple):
                value = ", ".join(f"{v:.2f}" for v in value)
            elif isinstance(value, float):
                value = f"{value:.2f}"
            print(f"  {name}: {value}")
    finally:
        sandbox.terminate()
        sandbox.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--sends", type=int, default=3000)
    parser.add_argument("--workers", default="1,2,4")
    add_service_args(parser, 7)
    asyncio.run(main(parser.parse_args()))
