"""Gateway submit throughput and latency, beside the same server's /healthz in the same run.

    .venv/bin/python bench/gateway.py [--clients 50] [--rate 1000] [--seconds 10]

Needs the load generator ``hey`` (Debian package ``hey``), which runs as its own process
so that the client's cost is not the gateway's. One ``tgflow gateway`` process against a
fresh database and Redis database, with no worker (submits only):

1. ``GET /healthz`` as fast as ``--clients`` connections go: what the server and the
   framework cost with no work behind them;
2. ``POST /v1/jobs`` (``system.echo``, with a bearer token) as fast as they go: submits
   per second, p50 and p99, and the ratio to /healthz;
3. ``POST /v1/jobs`` at a fixed total rate (``--rate``, spread over the clients): the
   rate reached, p50 and p99 (target: p99 under 50 ms at 1,000 per second, 50 clients).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.pipeline import prepare  # noqa: E402
from bench.telegram import add_service_args, free_port, spawn, wait_http  # noqa: E402
from shared.auth import mint_token  # noqa: E402
from shared.config import DEFAULT_SECRET  # noqa: E402


@dataclass
class Load:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    ok: int
    other: int


def hey(name: str, url: str, args: list[str]) -> Load:
    """Run hey and read its summary: rate, p50, p99 and status codes."""
    out = subprocess.run(["hey", *args, url], check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: int) -> float:
        return float(re.search(rf"{p}% in ([\d.]+) secs", out).group(1)) * 1000  # type: ignore[union-attr]

    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    ok = sum(n for c, n in codes.items() if c < 300)
    return Load(name, rps, pct(50), pct(99), ok, sum(codes.values()) - ok)


async def main(args: argparse.Namespace) -> None:
    if shutil.which("hey") is None:
        sys.exit("bench/gateway.py needs hey: apt-get install hey")
    env = await prepare(args.database, args.redis)
    port = free_port()
    gateway = spawn("gateway", "--port", str(port), env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_http(f"{base}/healthz")
        token = mint_token(DEFAULT_SECRET, "bench")
        submit = [
            "-m", "POST",
            "-H", f"Authorization: Bearer {token}",
            "-T", "application/json",
            "-d", '{"type":"system.echo","params":{"message":"hello"}}',
        ]  # fmt: skip
        clients, seconds = str(args.clients), f"{args.seconds}s"
        hey("warm-up", f"{base}/v1/jobs", ["-z", "2s", "-c", clients, *submit])
        per_client = args.rate / args.clients
        jobs, flat = f"{base}/v1/jobs", ["-z", seconds, "-c", clients]
        paced = [*flat, "-q", f"{per_client:g}"]
        loads = [
            hey("GET /healthz, flat out", f"{base}/healthz", flat),
            hey("POST /v1/jobs, flat out", jobs, [*flat, *submit]),
            hey(f"POST /v1/jobs at {args.rate}/s", jobs, [*paced, *submit]),
        ]
    finally:
        gateway.terminate()
        gateway.wait()
    print(f"\n{args.clients} clients, {args.seconds} s each (hey)")
    print(f"{'':28}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'2xx':>8}{'other':>7}")
    for load in loads:
        print(
            f"{load.name:28}{load.rps:>9.0f}{load.p50_ms:>9.1f}{load.p99_ms:>9.1f}"
            f"{load.ok:>8}{load.other:>7}"
        )
    health, fast, steady = loads
    print(f"submits flat out / /healthz: x{fast.rps / health.rps:.2f}")
    verdict = "met" if steady.p99_ms < 50 and steady.rps >= 0.95 * args.rate else "not met"
    print(
        f"at {args.rate}/s: reached {steady.rps:.0f}/s, p99 {steady.p99_ms:.1f} ms "
        f"(target p99 < 50 ms at 1,000/s: {verdict})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=10)
    add_service_args(parser, 7)
    asyncio.run(main(parser.parse_args()))
