"""Chaos: many send jobs through worker processes that are killed, replaced and stopped,
with floods and dropped connections injected and Redis restarted once.

Three workers, 50 sandbox accounts and a stream of ``telegram.send_message`` jobs (600
here; ``make chaos`` runs 3,000). Meanwhile: SIGKILL one worker, start a new one, SIGKILL
another, restart Redis (AOF on), SIGTERM a third, start one more. Then:

- every accepted job reaches a final state, and succeeded;
- every job produced exactly one message in the sandbox (no loss, no duplicate);
- the sandbox ledger shows no moment where one auth key was connected twice;
- no account was disabled by any of it.

The test runs its own Redis (a child process with an append-only file), so restarting
it disturbs nobody else.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from services.sandbox.admin_client import SandboxAdmin
from services.sandbox.server import Sandbox
from tests.helpers import Proc, auth, eventually, free_port, wait_until_serving

JOBS = int(os.environ.get("TGFLOW_CHAOS_JOBS", "600"))
ACCOUNTS = int(os.environ.get("TGFLOW_CHAOS_ACCOUNTS", "50"))
BATCH = 50
SPREAD_SECONDS = 9.0  # submissions span the whole run of kills and restarts


class RedisServer:
    """A private redis-server with AOF on, which a test may restart."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="tgflow-chaos-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or shutil.which("valkey-server")
        assert binary, "redis-server is needed for the chaos test"
        self.proc = subprocess.Popen(
            [
                binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", self.dir,
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--save", "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    async def stop(self) -> None:
        """A clean shutdown: Redis writes its append-only file before exiting."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 20
            while self.proc.poll() is None:
                assert time.monotonic() < deadline, "redis-server did not stop"
                await asyncio.sleep(0.02)

    async def ready(self) -> None:
        async def pong() -> bool:
            client = Redis.from_url(self.url)
            try:
                return bool(await client.ping())
            except Exception:
                return False
            finally:
                await client.aclose()

        await eventually(pong, timeout=20, interval=0.05)

    async def cleanup(self) -> None:
        await self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
async def private_redis() -> AsyncIterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        await server.ready()
        yield server
    finally:
        await server.cleanup()


@pytest.fixture
def fleet() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop()


async def _import_accounts(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    out = []
    for i in range(ACCOUNTS):
        created = await admin.create_account(first_name=f"chaos{i}")
        response = await api.post(
            "/v1/accounts/import",
            json={"session_string": created["session_string"]},
            headers=auth(),
        )
        assert response.status_code == 201, response.text
        out.append((response.json(), created))
    return out


async def _submit_all(
    api: httpx.AsyncClient, accounts: list[tuple[dict[str, Any], dict[str, Any]]]
) -> dict[str, int]:
    """Submit every job in batches; a batch refused while Redis is away is sent again
    with the same idempotency keys. Returns job id -> job number."""
    jobs: dict[str, int] = {}
    for start in range(0, JOBS, BATCH):
        batch = [
            {
                "type": "telegram.send_message",
                "idempotency_key": f"chaos-{n}",
                "params": {
                    "account_id": accounts[n % len(accounts)][0]["id"],
                    "peer": "me",
                    "text": f"chaos {n}",
                },
            }
            for n in range(start, min(JOBS, start + BATCH))
        ]
        deadline = time.monotonic() + 60
        while True:
            try:
                response = await api.post("/v1/jobs:batch", json={"jobs": batch}, headers=auth())
            except httpx.TransportError:
                response = None
            if response is not None and response.is_success:
                break
            assert time.monotonic() < deadline, response.text if response else "no answer"
            await asyncio.sleep(0.2)
        for item, body in zip(response.json()["items"], batch, strict=True):
            assert item["error"] is None, item
            jobs[item["id"]] = int(str(body["idempotency_key"]).split("-")[1])
        await asyncio.sleep(SPREAD_SECONDS * BATCH / JOBS)
    return jobs


async def _final_states(redis: Redis, job_ids: list[str]) -> dict[str, str]:
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(f"tgflow:job:{job_id}", "status")
        statuses = await pipe.execute()
    return {j: (s.decode() if s else "missing") for j, s in zip(job_ids, statuses, strict=True)}


async def test_chaos_every_job_once_and_no_key_ever_connected_twice(
    tgflow_env: dict[str, str], private_redis: RedisServer, fleet: list[Proc]
) -> None:
    async with Sandbox() as sandbox, SandboxAdmin(sandbox.admin_url) as admin:
        env = {
            "TGFLOW_REDIS_URL": private_redis.url,
            "TGFLOW_SANDBOX_DC": f"127.0.0.1:{sandbox.mtproto_port}",
            "TGFLOW_TELEGRAM_SHARDS": "16",
            "TGFLOW_SHARD_LEASE_SECONDS": "3",
            "TGFLOW_SHARD_HANDOFF_SECONDS": "1",
            "TGFLOW_JOB_LEASE_SECONDS": "3",
            "TGFLOW_WORKER_DRAIN_SECONDS": "2",
            "TGFLOW_HEARTBEAT_SECONDS": "1",
            "TGFLOW_WORKER_POLL_DELAY": "0.1",
            "TGFLOW_TELEGRAM_SEND_RATE": "1000",
            "TGFLOW_TELEGRAM_SEND_BURST": "1000",
            "TGFLOW_TELEGRAM_PEER_SEND_RATE": "1000",
            "TGFLOW_TELEGRAM_PEER_SEND_BURST": "1000",
            "TGFLOW_LOG_LEVEL": os.environ.get("TGFLOW_CHAOS_LOG_LEVEL", "WARNING"),
        }

        def worker(name: str) -> Proc:
            proc = Proc("worker", env={**env, "TGFLOW_INSTANCE_NAME": name}).start()
            fleet.append(proc)
            return proc

        port = free_port()
        fleet.append(Proc("gateway", "--port", str(port), env=env).start())
        workers = {name: worker(name) for name in ("w1", "w2", "w3")}
        redis = Redis.from_url(private_redis.url)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as api:
            await wait_until_serving(api)
            accounts = await _import_accounts(api, admin)
            users = [created["user_id"] for _, created in accounts]
            for user in users[:5]:  # a flood wait on the first send of five accounts
                await admin.add_fault(
                    user, "flood_wait", method="messages.sendMessage", seconds=1, times=1
                )
            for user in users[5:10]:  # the DC acts, then the connection drops
                await admin.add_fault(user, "drop_after", method="messages.sendMessage", times=2)
            for user in users[10:15]:  # the connection drops before the DC acts
                await admin.add_fault(user, "drop_before", method="messages.sendMessage", times=2)

            submitting = asyncio.create_task(_submit_all(api, accounts))
            await asyncio.sleep(1.5)
            workers["w1"].signal(signal.SIGKILL)
            workers["w4"] = worker("w4")
            await asyncio.sleep(2.0)
            workers["w2"].signal(signal.SIGKILL)
            await asyncio.sleep(1.0)
            await private_redis.stop()
            await asyncio.sleep(1.0)
            private_redis.start()
            await private_redis.ready()
            await asyncio.sleep(2.0)
            workers["w3"].signal(signal.SIGTERM)
            workers["w5"] = worker("w5")
            jobs = await submitting
            assert await workers["w3"].wait(timeout=30) == 0, workers["w3"].output()

            async def all_final() -> bool:
                states = await _final_states(redis, list(jobs))
                return all(s in ("succeeded", "failed", "cancelled") for s in states.values())

            try:
                await eventually(all_final, timeout=max(120, JOBS / 10), interval=0.5)
            except AssertionError:
                states = Counter((await _final_states(redis, list(jobs))).values())
                logs = "\n".join(w.output()[-3000:] for w in workers.values())
                raise AssertionError(f"not all final: {states}\n{logs}") from None

            statuses = Counter((await _final_states(redis, list(jobs))).values())
            assert statuses == {"succeeded": JOBS}, statuses

            sent: Counter[str] = Counter()
            for user in users:
                for message in await admin.messages(user):
                    sent[message["text"]] += 1
            assert sent == Counter(f"chaos {n}" for n in range(JOBS))  # each exactly once

            overlaps = await admin.overlaps()
            if overlaps:
                keys = {o["auth_key_id"] for o in overlaps}
                records = [r for r in await admin.ledger() if r["auth_key_id"] in keys]
                logs = "\n".join(f"--- {n}\n{w.output()[-20000:]}" for n, w in workers.items())
                raise AssertionError(f"overlaps {overlaps}\nrecords {records}\n{logs}")
            listed = (await api.get("/v1/accounts", headers=auth())).json()
            states = Counter(a["state"] for a in listed["items"])
            assert states.get("disabled", 0) == 0, states
        await redis.aclose()
        with contextlib.suppress(Exception):
            for proc in fleet:
                proc.signal(signal.SIGTERM)
