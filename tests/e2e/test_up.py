"""`tgflow up` on a machine with nothing configured: embedded servers, all services."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.helpers import free_port


async def _wait_for_text(
    log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float
) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = log.read_text(errors="replace")
        if text in content:
            return content
        if proc.poll() is not None:
            raise AssertionError(f"tgflow up exited early:\n{content[-3000:]}")
        await asyncio.sleep(0.2)
    raise AssertionError(f"{text!r} not printed within {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
async def test_up_runs_everything_embedded_and_stops_without_orphans(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in ("TGFLOW_DATABASE_URL", "TGFLOW_REDIS_URL", "TGFLOW_ENV"):
        monkeypatch.delenv(key, raising=False)
    data_dir = Path(tempfile.mkdtemp(prefix="tgflow-up-"))
    port, monitor_port = free_port(), free_port()
    env = {
        **os.environ,
        "TGFLOW_DATA_DIR": str(data_dir),
        "TGFLOW_GATEWAY_PORT": str(port),
        "TGFLOW_MONITOR_PORT": str(monitor_port),
        "TGFLOW_SANDBOX_DC": f"127.0.0.1:{free_port()}",
        "TGFLOW_SANDBOX_ADMIN_PORT": str(free_port()),
    }
    log = data_dir / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "up"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        banner = await _wait_for_text(log, "Press Ctrl-C to stop.", proc, timeout=120)
        token = re.search(r"Bearer ([\w.-]+)", banner)
        assert token is not None
        descendants = psutil.Process(proc.pid).children(recursive=True)
        # gateway, worker, monitor, sandbox and valkey (postgres is daemonised)
        assert len(descendants) >= 5
        headers = {"Authorization": f"Bearer {token.group(1)}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            response = await client.post(
                "/v1/jobs",
                json={"type": "system.echo", "params": {"message": "up"}},
                headers=headers,
            )
            assert response.status_code == 202
            job_id = response.json()["id"]

            async def fetch(path: str) -> httpx.Response:
                return await client.get(path, headers=headers)

            job = None
            deadline = time.monotonic() + 20
            while job is None and time.monotonic() < deadline:
                body = (await fetch(f"/v1/jobs/{job_id}")).json()
                job = body if body["status"] == "succeeded" else None
                await asyncio.sleep(0.1)
            assert job is not None
            assert job["result"]["message"] == "up"
            # No Telegram credentials: the sandbox DC serves a real login end to end.
            login = await client.post(
                "/v1/accounts", json={"phone": "+15550009999"}, headers=headers
            )
            assert login.status_code == 201, login.text
            account_id = login.json()["account_id"]
            done = await client.post(
                f"/v1/accounts/{account_id}/login/code", json={"code": "22222"}, headers=headers
            )
            assert done.json()["state"] == "active", done.text
        async with httpx.AsyncClient() as client:
            metrics = await client.get(f"http://127.0.0.1:{monitor_port}/metrics")
        assert "tgflow_queue_depth" in metrics.text
        postgres = [
            p
            for p in psutil.process_iter(["cmdline"])
            if str(data_dir) in " ".join(p.info["cmdline"] or [])
            and "postgres" in " ".join(p.info["cmdline"] or [])
        ]
        assert postgres, "the embedded PostgreSQL should be running"
        proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(proc.wait, 60) == 0
        _, alive = await asyncio.to_thread(psutil.wait_procs, descendants + postgres, 10)
        assert alive == [], f"orphans left behind: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
