"""``tgflow up``: the whole system in one command, on embedded defaults when needed.

Starts PostgreSQL and Valkey when no URLs are configured, migrates, then runs the
gateway, workers and monitor as child processes. Ctrl-C (or SIGTERM) stops them in
order and then the embedded servers; children also die if this process is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from services.cli.embedded import EmbeddedPostgres, EmbeddedValkey
from shared.auth import mint_token
from shared.config import DEFAULT_SECRET
from shared.db import migrate

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM the child when ``tgflow up`` goes away, however it ends."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn(kind: str, env: dict[str, str], *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "services.cli.main", kind, *extra],
        env=env,
        start_new_session=True,  # Ctrl-C reaches only us; we stop children in order
        preexec_fn=_die_with_parent,
    )


def _wait_ready(url: str, children: list[subprocess.Popen[bytes]], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(c.poll() is not None for c in children):
            return False
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url, timeout=1) as response,  # noqa: S310 - our own URL
        ):
            if response.status == 200:
                return True
        time.sleep(0.2)
    return False


def _stop(children: list[subprocess.Popen[bytes]], grace: float) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=grace)
        if child.poll() is None:
            child.kill()
            child.wait()


def _start_sandbox(env: dict[str, str], children: list[subprocess.Popen[bytes]]) -> str:
    """Serve the sandbox DC and model endpoint; point the workers at it. Its admin URL."""
    host, _, port = env.setdefault("TGFLOW_SANDBOX_DC", "127.0.0.1:10443").rpartition(":")
    admin_port = env.setdefault("TGFLOW_SANDBOX_ADMIN_PORT", "10480")
    admin = f"http://{host}:{admin_port}"
    env.setdefault("TGFLOW_AI_SANDBOX_URL", f"{admin}/v1")
    children.append(
        _spawn("sandbox", env, "--host", host, "--port", port, "--admin-port", admin_port)
    )
    if not _wait_ready(f"{admin}/admin/server", children, timeout=30):
        raise RuntimeError("the sandbox DC did not start")
    return admin


def _print_banner(env: dict[str, str], gateway: str, monitor: str, token: str) -> None:
    sandbox = env.get("TGFLOW_SANDBOX_ADMIN_URL")
    sandbox_line = (
        f"  sandbox   {sandbox}  (local Telegram DC; login code 22222)\n" if sandbox else ""
    )
    print(
        f"""
tgflow is up.
  gateway   {gateway}        (docs: {gateway}/docs)
  monitor   {monitor}/metrics
{sandbox_line}  postgres  {env["TGFLOW_DATABASE_URL"]}
  redis     {env["TGFLOW_REDIS_URL"]}

Submit a job:
  curl -s -X POST {gateway}/v1/jobs \\
    -H 'Authorization: Bearer {token}' \\
    -H 'Content-Type: application/json' \\
    -d '{{"type": "system.echo", "params": {{"message": "hello"}}}}'

Press Ctrl-C to stop.""",
        flush=True,
    )


def up(*, workers: int = 1) -> int:
    env = dict(os.environ)
    env.setdefault("TGFLOW_ENV", "development")
    data_dir = Path(env.get("TGFLOW_DATA_DIR", ".tgflow")).resolve()
    port = env.setdefault("TGFLOW_GATEWAY_PORT", "8000")
    monitor_port = env.setdefault("TGFLOW_MONITOR_PORT", "8001")
    env.setdefault("TGFLOW_MONITOR_URL", f"http://127.0.0.1:{monitor_port}")
    host = env.setdefault("TGFLOW_GATEWAY_HOST", "127.0.0.1")
    postgres = EmbeddedPostgres(data_dir / "postgres")
    valkey = EmbeddedValkey(data_dir / "valkey")
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def request_stop(signum: int, _: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        if "TGFLOW_DATABASE_URL" not in env:
            print(f"starting embedded PostgreSQL in {postgres.data_dir}", flush=True)
            env["TGFLOW_DATABASE_URL"] = postgres.start()
        if "TGFLOW_REDIS_URL" not in env:
            print(f"starting embedded Valkey in {valkey.data_dir}", flush=True)
            env["TGFLOW_REDIS_URL"] = valkey.start()
        applied = asyncio.run(migrate(env["TGFLOW_DATABASE_URL"]))
        print(f"migrations applied: {applied or 'none pending'}", flush=True)
        if "TGFLOW_TELEGRAM_API_ID" not in env:  # no Telegram credentials: the sandbox DC
            env["TGFLOW_SANDBOX_ADMIN_URL"] = _start_sandbox(env, children)
        children.append(_spawn("gateway", env))
        children.extend(_spawn("worker", env) for _ in range(workers))
        children.append(_spawn("monitor", env))
        gateway = f"http://{host}:{port}"
        if not _wait_ready(f"{gateway}/readyz", children, timeout=60):
            print("tgflow did not become ready; stopping", file=sys.stderr)
            return 1
        secret = env.get("TGFLOW_SECRET_KEY", DEFAULT_SECRET)
        _print_banner(
            env,
            gateway,
            f"http://127.0.0.1:{monitor_port}",
            mint_token(
                secret,
                "default",
                scopes=("jobs:read", "jobs:write", "monitoring:read", "monitoring:write"),
            ),
        )
        while not stopping:
            if any(c.poll() is not None for c in children):
                print("a tgflow process exited; stopping", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        print("stopping tgflow", flush=True)
        _stop(children, grace=30)
        valkey.stop()
        postgres.stop()
        print("stopped", flush=True)
