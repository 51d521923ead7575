"""Telegram runtime benchmark against the sandbox DC, with a bare Telethon baseline.

    .venv/bin/python bench/telegram.py [--accounts 1000] [--send-accounts 100] [--sends 2000]
                                       [--dc-latency-ms 0]

1. Memory: a fresh process opens the worker's ClientPool and connects N accounts (stored
   sealed in Postgres, as a worker would find them), each making one users.getUsers call;
   RSS after minus RSS before, per account, and the time to connect them all (50 at a
   time).
2. Sends: M telegram.send_message jobs over HTTP (gateway and worker processes) spread
   over K accounts, one per POST and then 100 per POST /v1/jobs:batch, jobs per second
   from the first job created to the last finished;
   then the same M sends made by a bare Telethon loop (K clients in one process, each
   sending its share in sequence) in the same run. Send budgets are raised for the run:
   they are a pacing policy, not overhead. The sandbox answers at once; with
   --dc-latency-ms it holds every sendMessage answer that long for both, as a DC does.
3. Where the cores went: CPU milliseconds per send of every process that took part
   (gateway, worker, sandbox, Redis, Postgres, this script's HTTP client; for the bare
   loop, its clients and the sandbox). The host's cores are shared by all of them.
4. The queue's ceiling: the same number of no-op jobs through a bare ARQ worker (tuned as
   in bench/pipeline.py) on the same Redis, in the same run: what any job queued through
   ARQ is bounded by on this host, whatever it then does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import psutil
from redis.asyncio import Redis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from services.sandbox.admin_client import SandboxAdmin  # noqa: E402
from shared.auth import mint_token  # noqa: E402
from shared.config import DEFAULT_SECRET  # noqa: E402
from shared.db import migrate  # noqa: E402
from tests.helpers import free_port  # noqa: E402  (outside the ephemeral range)


def spawn(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def wait_http(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            try:
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU seconds of these processes (those gone count as 0)."""
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def pids_named(name: str) -> list[int]:
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == name]


class CpuMeter:
    """CPU spent by each role over a stretch of the run: where the cores went."""

    def __init__(self, roles: dict[str, list[int]]) -> None:
        self.roles = {
            **roles,
            "redis": pids_named("redis-server"),
            "postgres": pids_named("postgres"),
        }
        self.start = {role: cpu_seconds(pids) for role, pids in self.roles.items()}

    def per_item_ms(self, items: int) -> dict[str, float]:
        self.roles["postgres"] = pids_named("postgres")  # backends opened meanwhile
        return {
            role: (cpu_seconds(pids) - self.start.get(role, 0.0)) * 1000 / items
            for role, pids in self.roles.items()
        }


def cpu_line(per_send: dict[str, float]) -> str:
    parts = ", ".join(f"{role} {ms:.2f}" for role, ms in per_send.items())
    return f"{sum(per_send.values()):.2f} ms ({parts})"


FINAL = ("succeeded", "failed", "cancelled")


async def job_rows(redis: Redis, ids: list[str]) -> list[dict[str, str]]:
    """The jobs' hashes as Redis holds them now (``redis`` decodes responses)."""
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hgetall(f"tgflow:job:{job_id}")
        rows: list[dict[str, str]] = await pipe.execute()
    return rows


async def until_final(
    redis: Redis, ids: list[str], *, interval: float = 0.05, limit: float = 600
) -> list[dict[str, str]]:
    """Wait until every job is final, then their rows; raise if any did not succeed.

    Jobs finish roughly in the order they were submitted, so each poll reads the status
    of only the oldest open ones (a window of 256) and moves on at once while that
    window is all final: waiting costs the machine under test little (reading every
    open job on every poll cost it as much CPU as the gateway).
    """
    deadline = time.monotonic() + limit
    pending = list(ids)
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} jobs not final within {limit} s")
        window = pending[:256]
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in window:
                pipe.hget(f"tgflow:job:{job_id}", "status")
            statuses = await pipe.execute()
        still = [j for j, status in zip(window, statuses, strict=True) if status not in FINAL]
        pending = still + pending[len(window) :]
        if still:
            await asyncio.sleep(interval)
    rows = await job_rows(redis, ids)
    failed = [r for r in rows if r["status"] != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} jobs did not succeed: {failed[0].get('error')}")
    return rows


def add_service_args(parser: argparse.ArgumentParser, redis_db: int) -> None:
    """``--database`` (an admin URL the bench makes its own database beside) and
    ``--redis`` (a database the bench flushes), from the TGFLOW_BENCH_* variables."""
    parser.add_argument(
        "--database",
        default=os.environ.get(
            "TGFLOW_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument(
        "--redis",
        default=os.environ.get("TGFLOW_BENCH_REDIS_URL", f"redis://127.0.0.1:6379/{redis_db}"),
    )


async def fresh_database(admin_dsn: str, name: str) -> str:
    """A new, migrated database beside ``admin_dsn``'s; its URL."""
    conn = await asyncpg.connect(admin_dsn)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    dsn = urlunsplit(urlsplit(admin_dsn)._replace(path=f"/{name}"))
    await migrate(dsn)
    return dsn


def service_env(dsn: str, redis_url: str) -> dict[str, str]:
    """The environment of tgflow processes on the bench's database and Redis."""
    return {
        **os.environ,
        "TGFLOW_ENV": "development",
        "TGFLOW_DATABASE_URL": dsn,
        "TGFLOW_REDIS_URL": redis_url,
        "TGFLOW_LOG_LEVEL": "WARNING",
        "TGFLOW_MIGRATE_ON_START": "false",
    }


def sandbox_env(dsn: str, redis_url: str, mtproto_port: int, accounts: int) -> dict[str, str]:
    """Processes against the sandbox DC, with send budgets out of the way: they are a
    pacing policy, not overhead."""
    return {
        **service_env(dsn, redis_url),
        "TGFLOW_SANDBOX_DC": f"127.0.0.1:{mtproto_port}",
        "TGFLOW_TELEGRAM_SEND_RATE": "100000",
        "TGFLOW_TELEGRAM_SEND_BURST": "100000",
        "TGFLOW_TELEGRAM_PEER_SEND_RATE": "100000",
        "TGFLOW_TELEGRAM_PEER_SEND_BURST": "100000",
        "TGFLOW_TELEGRAM_MAX_CLIENTS": str(accounts + 10),
    }


async def store_accounts(env: dict[str, str], sessions: list[tuple[int, str]]) -> list[str]:
    """Seal and store sessions as an import would (bench shortcut: no API round trip)."""
    from services.worker.telegram import accounts
    from services.worker.telegram.vault import vault_from_settings
    from shared.config import WorkerSettings
    from shared.db import create_pool

    settings = WorkerSettings(_env_file=None, **{"database_url": env["TGFLOW_DATABASE_URL"]})
    vault = vault_from_settings(None, settings.secret_key.get_secret_value())
    pool = await create_pool(settings, role="bench")
    ids = []
    try:
        for user_id, session in sessions:
            me = {"id": user_id, "username": None, "first_name": "b", "phone": None, "dc_id": 2}
            stored = await accounts.insert_active(
                pool, vault=vault, tenant="bench", session=session, me=me
            )
            ids.append(str(stored.id))
    finally:
        await pool.close()
    return ids


MEMORY_PROBE = r"""
import asyncio, os, sys, time, uuid, psutil
sys.path.insert(0, os.environ["ROOT"])
from shared.config import WorkerSettings
from shared.db import create_pool
from shared.redis_client import create_redis
from services.worker.telegram import accounts
from services.worker.telegram.runtime import TelegramRuntime
from services.worker.telegram.vault import vault_from_settings

async def main():
    ids = [uuid.UUID(i) for i in sys.argv[1].split(",")]
    settings = WorkerSettings(telegram_max_clients=len(ids) + 10)
    pool, redis = await create_pool(settings, role="bench"), create_redis(settings)
    vault = vault_from_settings(None, settings.secret_key.get_secret_value())
    runtime = TelegramRuntime(settings, pool, redis, vault, "bench")
    loaded = [await accounts.load(pool, i) for i in ids]
    proc = psutil.Process()
    before = proc.memory_info().rss
    sem = asyncio.Semaphore(50)
    from telethon import types
    from telethon.tl.functions.users import GetUsersRequest
    async def connect(account):
        async with sem:
            async with runtime.pool.lease(account) as client:
                await client(GetUsersRequest([types.InputUserSelf()]))  # connected and used
    start = time.perf_counter()
    await asyncio.gather(*(connect(a) for a in loaded))
    took = time.perf_counter() - start
    after = proc.memory_info().rss
    print(len(runtime.pool.connected()), before, after, took)
    await runtime.close(); await pool.close(); await redis.aclose()
asyncio.run(main())
"""


async def bench_memory(env: dict[str, str], ids: list[str]) -> tuple[int, float, float]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        MEMORY_PROBE,
        ",".join(ids),
        env={**env, "ROOT": ROOT},
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    connected, before, after, took = out.decode().strip().splitlines()[-1].split()
    return int(connected), (int(after) - int(before)) / int(connected) / 2**20, float(took)


async def bench_pipeline(
    env: dict[str, str], ids: list[str], sends: int, sandbox_pid: int, batch: int = 1
) -> tuple[float, dict[str, float]]:
    """Send jobs per second, and CPU milliseconds per send by role."""
    port = free_port()
    procs = [
        spawn("gateway", "--port", str(port), env=env),
        spawn("worker", "--concurrency", "200", env=env),
    ]
    redis = Redis.from_url(env["TGFLOW_REDIS_URL"], decode_responses=True)
    headers = {"Authorization": f"Bearer {mint_token(DEFAULT_SECRET, 'bench')}"}
    try:
        await wait_http(f"http://127.0.0.1:{port}/readyz")
        meter = CpuMeter(
            {
                "gateway": [procs[0].pid],
                "worker": [procs[1].pid],
                "sandbox": [sandbox_pid],
                "bench client": [os.getpid()],
            }
        )
        job_ids: list[str] = []
        remaining = iter(range(0, sends, batch))
        async with aiohttp.ClientSession(
            base_url=f"http://127.0.0.1:{port}",
            headers=headers,
            connector=aiohttp.TCPConnector(limit=50),
        ) as http:

            def body(i: int) -> dict[str, Any]:
                return {
                    "type": "telegram.send_message",
                    "params": {"account_id": ids[i % len(ids)], "peer": "me", "text": f"bench {i}"},
                }

            async def submit() -> None:
                for first in remaining:
                    if batch == 1:
                        async with http.post("/v1/jobs", json=body(first)) as response:
                            response.raise_for_status()
                            job_ids.append((await response.json())["id"])
                        continue
                    jobs = [body(i) for i in range(first, min(sends, first + batch))]
                    async with http.post("/v1/jobs:batch", json={"jobs": jobs}) as response:
                        response.raise_for_status()
                        job_ids.extend(item["id"] for item in (await response.json())["items"])

            await asyncio.gather(*(submit() for _ in range(50 if batch == 1 else 5)))
        rows = await until_final(redis, job_ids, interval=0.1)
        cpu = meter.per_item_ms(sends)
        span = max(int(r["finished_at"]) for r in rows) - min(int(r["created_at"]) for r in rows)
        if os.environ.get("BENCH_DEBUG"):
            waits = sorted(int(r["started_at"]) - int(r["created_at"]) for r in rows)
            runs = sorted(int(r["finished_at"]) - int(r["started_at"]) for r in rows)
            print(
                "start waits ms p50/p99",
                waits[len(waits) // 2] / 1000,
                waits[-2] / 1000,
                "runs ms p50/p99",
                runs[len(runs) // 2] / 1000,
                runs[-2] / 1000,
                "attempts",
                sorted({r["attempts"] for r in rows}),
                "errors",
                {r.get("error", "")[:60] for r in rows},
            )
        return len(rows) / (span / 1e6), cpu
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait()
        await redis.aclose()


async def bench_bare(
    sessions: list[str], sends: int, sandbox_pid: int
) -> tuple[float, dict[str, float]]:
    """Sends per second, and CPU milliseconds per send by role."""
    from services.sandbox.client import make_client, register_sandbox_key

    register_sandbox_key()
    clients = [make_client(s) for s in sessions]
    await asyncio.gather(*(c.connect() for c in clients))
    share = [
        sends // len(clients) + (1 if i < sends % len(clients) else 0) for i in range(len(clients))
    ]

    async def loop(client: Any, count: int) -> None:
        for i in range(count):
            await client.send_message("me", f"bare {i}")

    meter = CpuMeter({"sandbox": [sandbox_pid], "bare client": [os.getpid()]})
    start = time.perf_counter()
    await asyncio.gather(*(loop(c, n) for c, n in zip(clients, share, strict=True)))
    took = time.perf_counter() - start
    cpu = meter.per_item_ms(sends)
    await asyncio.gather(*(c.disconnect() for c in clients))
    return sends / took, cpu


async def main(args: argparse.Namespace) -> None:
    dsn = await fresh_database(args.database, "tgflow_bench_tg")
    redis = Redis.from_url(args.redis)
    await redis.flushdb()
    await redis.aclose()
    mt_port, admin_port = free_port(), free_port()
    env = sandbox_env(dsn, args.redis, mt_port, args.accounts)
    sandbox = spawn("sandbox", "--port", str(mt_port), "--admin-port", str(admin_port), env=env)
    try:
        admin_url = f"http://127.0.0.1:{admin_port}"
        await wait_http(f"{admin_url}/admin/server")
        async with SandboxAdmin(admin_url) as admin:
            created = [await admin.create_account() for _ in range(args.accounts)]
            if args.dc_latency_ms:
                # Telegram answers a send after tens of milliseconds, not at once.
                for account in created[: args.send_accounts]:
                    await admin.add_fault(
                        account["user_id"],
                        "delay",
                        method="messages.sendMessage",
                        seconds=args.dc_latency_ms / 1000,
                    )
        sessions = [(c["user_id"], c["session_string"]) for c in created]
        ids = await store_accounts(env, sessions)
        connected, per_account_mib, took = await bench_memory(env, ids)
        print(
            f"memory: {connected} accounts connected through the pool in {took:.1f} s; "
            f"RSS {per_account_mib:.2f} MiB per connected account (target < 3)"
        )
        send_ids = ids[: args.send_accounts]
        pipeline, pipeline_cpu = await bench_pipeline(env, send_ids, args.sends, sandbox.pid)
        batched, batched_cpu = await bench_pipeline(
            env, send_ids, args.sends, sandbox.pid, batch=100
        )
        bare, bare_cpu = await bench_bare(
            [s for _, s in sessions[: args.send_accounts]], args.sends, sandbox.pid
        )
        # The queue's own ceiling: no job queued through ARQ can go faster than ARQ does
        # with nothing to run (bench.pipeline imports this module: imported here).
        from bench.pipeline import bench_arq

        arq = (await bench_arq(args.redis, "tuned", args.sends, 50, idle=0)).throughput
        latency = (
            f", DC answering sends after {args.dc_latency_ms:g} ms" if args.dc_latency_ms else ""
        )
        print(f"sends over {args.send_accounts} accounts, {args.sends} messages{latency}:")
        print(
            f"  tgflow jobs, one per POST (HTTP -> queue -> worker -> sandbox): {pipeline:6.0f} /s"
        )
        print(
            f"  tgflow jobs, 100 per POST /v1/jobs:batch:                       {batched:6.0f} /s"
        )
        print(f"  bare Telethon loop, same accounts:                              {bare:6.0f} /s")
        print(f"  ARQ alone, no-op jobs, one worker (poll 10 ms, 100 at once):   {arq:6.0f} /s")
        print(
            f"  ratio tgflow / bare: {pipeline / bare:.2f}, batched {batched / bare:.2f} "
            f"(target >= 0.7); ARQ alone / bare: {arq / bare:.2f}"
        )
        print("CPU per send, every process on the host that took part:")
        print(f"  one per POST: {cpu_line(pipeline_cpu)}")
        print(f"  batched:      {cpu_line(batched_cpu)}")
        print(f"  bare loop:    {cpu_line(bare_cpu)}")
        print(f"host: {psutil.cpu_count()} CPUs; sandbox, gateway, worker and clients share them")
    finally:
        sandbox.terminate()
        sandbox.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--send-accounts", type=int, default=100)
    parser.add_argument("--sends", type=int, default=2000)
    parser.add_argument(
        "--dc-latency-ms",
        type=float,
        default=0.0,
        help="hold every messages.sendMessage answer this long, for both tgflow and the "
        "bare loop (the sandbox otherwise answers at once, unlike a real DC)",
    )
    add_service_args(parser, 7)
    asyncio.run(main(parser.parse_args()))
