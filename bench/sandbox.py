"""Benchmark the sandbox DC with the stock Telethon client.

Measures, against one sandbox process:

1. how many idle Telethon connections it holds at once (and its memory),
2. messages.sendMessage round trips per second through 1 and through 100
   clients, next to a bare asyncio echo over the same TCP "full" transport
   (same framing code, no MTProto) as the ceiling, with ratios.

Run:  .venv/bin/python bench/sandbox.py [--idle 2000] [--seconds 5] [--uvloop]

The sandbox, the echo server and the idle-connection holders each run in their
own process; round-trip clients run in this process.
"""

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.sandbox.client import make_client, register_sandbox_key  # noqa: E402
from services.sandbox.transport import FullCodec  # noqa: E402

PAYLOAD = 136  # bytes of an encrypted sendMessage request on the wire


def raise_nofile(wanted: int) -> tuple[int, int]:
    """Lift the soft open-files limit (inherited by child processes)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, max(soft, wanted)) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


async def spawn(*args: str) -> tuple[asyncio.subprocess.Process, list[str]]:
    """Start `python <args>` and return it with its first stdout line split."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=str(ROOT),
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().split()
    return proc, line


async def start_sandbox(uvloop: bool) -> tuple[asyncio.subprocess.Process, str, int, str]:
    cmd = ["-m", "services.sandbox.cli", "--port", "0", "--admin-port", "0"]
    proc, first = await spawn(*cmd, *(["--uvloop"] if uvloop else []))
    assert proc.stdout is not None
    second = (await proc.stdout.readline()).decode().split()
    host, port = first[2].rsplit(":", 1)
    return proc, host, int(port), second[2]


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


async def make_sessions(admin_url: str, count: int) -> list[str]:
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(base_url=admin_url, limits=limits, timeout=30) as http:
        sem = asyncio.Semaphore(20)

        async def one() -> str:
            async with sem:
                response = await http.post("/admin/accounts", json={})
                session: str = response.json()["session_string"]
                return session

        return list(await asyncio.gather(*(one() for _ in range(count))))


# -- idle connections -----------------------------------------------------


async def idle_worker(sessions: list[str]) -> None:
    """Child role: connect every session, report, hold until stdin closes."""
    register_sandbox_key()
    sem = asyncio.Semaphore(50)
    clients = [make_client(s, timeout=30, receive_updates=False) for s in sessions]

    async def connect(client: Any) -> None:
        async with sem:
            await client.connect()

    await asyncio.gather(*(connect(c) for c in clients))
    print(f"ready {sum(1 for c in clients if c.is_connected())}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await asyncio.gather(*(c.disconnect() for c in clients))


async def idle_phase(admin_url: str, server_pid: int, count: int, procs: int) -> dict[str, Any]:
    sessions = await make_sessions(admin_url, count)
    before = psutil.Process(server_pid).memory_info().rss
    started = time.perf_counter()
    workers = []
    for i in range(procs):
        chunk = sessions[i::procs]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--role",
            "idle-worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=str(ROOT),
        )
        assert proc.stdin is not None
        proc.stdin.write((json.dumps(chunk) + "\n").encode())
        await proc.stdin.drain()
        workers.append(proc)
    ready = 0
    for proc in workers:
        assert proc.stdout is not None
        ready += int((await asyncio.wait_for(proc.stdout.readline(), 600)).split()[1])
    connect_seconds = time.perf_counter() - started
    async with httpx.AsyncClient(base_url=admin_url, timeout=60) as http:
        ledger = (await http.get("/admin/ledger")).json()["connections"]
        overlaps = (await http.get("/admin/ledger/overlaps")).json()["overlaps"]
    live = sum(1 for c in ledger if c["closed"] is None and c["auth_key_id"])
    after = psutil.Process(server_pid).memory_info().rss
    for proc in workers:
        assert proc.stdin is not None
        proc.stdin.close()
    await asyncio.gather(*(asyncio.wait_for(p.wait(), 120) for p in workers))
    return {
        "requested": count,
        "clients_connected": ready,
        "server_live_connections": live,
        "overlaps": len(overlaps),
        "connect_seconds": round(connect_seconds, 2),
        "server_rss_mb": round(after / 2**20, 1),
        "server_kb_per_connection": round((after - before) / 1024 / max(live, 1), 1),
    }


# -- sendMessage round trips ----------------------------------------------


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def send_worker(sessions: list[str], seconds: float) -> None:
    """Child role: connect, say ready, on "go" send for `seconds`, report the count."""
    register_sandbox_key()
    made = [make_client(s, timeout=30) for s in sessions]
    sem = asyncio.Semaphore(50)

    async def connect(client: Any) -> None:
        async with sem:
            await client.connect()
            await client.send_message("me", "warm-up")

    await asyncio.gather(*(connect(c) for c in made))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    done = 0
    deadline = time.perf_counter() + seconds

    async def loop(client: Any) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await client.send_message("me", "bench")
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop(c) for c in made))
    print(f"done {done} {time.perf_counter() - started}", flush=True)
    await asyncio.gather(*(c.disconnect() for c in made))


async def rtt_phase(
    admin_url: str, server_pid: int, clients: int, seconds: float, procs: int
) -> tuple[float, float]:
    """Round trips/s, and the share of one core the server used meanwhile."""
    sessions = await make_sessions(admin_url, clients)
    workers = []
    for i in range(min(procs, clients)):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--role", "send-worker", "--seconds", str(seconds),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=str(ROOT),
        )  # fmt: skip
        assert proc.stdin is not None
        proc.stdin.write((json.dumps(sessions[i::procs]) + "\n").encode())
        await proc.stdin.drain()
        workers.append(proc)
    for proc in workers:
        assert proc.stdout is not None
        await asyncio.wait_for(proc.stdout.readline(), 300)
    cpu = cpu_seconds(server_pid)
    for proc in workers:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    total, longest = 0, 0.0
    for proc in workers:
        assert proc.stdout is not None
        _, count, elapsed = (await proc.stdout.readline()).split()
        total, longest = total + int(count), max(longest, float(elapsed))
    busy = (cpu_seconds(server_pid) - cpu) / longest
    await asyncio.gather(*(p.wait() for p in workers))
    return total / longest, busy


async def echo_server() -> None:
    """Child role: echo every full-transport frame back, print the port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        codec = FullCodec()
        try:
            while True:
                writer.write(codec.encode_packet(await codec.read_packet(reader)))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
    print(f"echo {server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def echo_phase(port: int, server_pid: int, conns: int, seconds: float) -> tuple[float, float]:
    done = 0
    deadline = time.perf_counter() + seconds
    payload = os.urandom(PAYLOAD)

    async def loop() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        codec = FullCodec()
        while time.perf_counter() < deadline:
            writer.write(codec.encode_packet(payload))
            await codec.read_packet(reader)
            done += 1
        writer.close()
        await writer.wait_closed()

    cpu = cpu_seconds(server_pid)
    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(conns)))
    elapsed = time.perf_counter() - started
    return done / elapsed, (cpu_seconds(server_pid) - cpu) / elapsed


async def run(args: argparse.Namespace) -> dict[str, Any]:
    register_sandbox_key()
    limits = raise_nofile(args.idle * 2 + 1024)
    sandbox, _host, _port, admin_url = await start_sandbox(args.uvloop)
    results: dict[str, Any] = {"nofile_limit": list(limits), "uvloop": args.uvloop}
    try:
        results["idle"] = await idle_phase(admin_url, sandbox.pid, args.idle, args.idle_procs)
        for label, clients in (("1_client", 1), ("100_clients", 100)):
            rate, busy = await rtt_phase(
                admin_url, sandbox.pid, clients, args.seconds, args.send_procs
            )
            results[f"send_{label}"] = round(rate, 1)
            results[f"send_{label}_server_cpu"] = round(busy, 2)
    finally:
        await stop(sandbox)
    echo, line = await spawn(__file__, "--role", "echo-server")
    try:
        for label, conns in (("1_conn", 1), ("100_conns", 100)):
            rate, busy = await echo_phase(int(line[1]), echo.pid, conns, args.seconds)
            results[f"echo_{label}"] = round(rate, 1)
            results[f"echo_{label}_server_cpu"] = round(busy, 2)
    finally:
        assert echo.stdin is not None
        echo.stdin.close()
        await echo.wait()
    results["ratio_1"] = round(results["send_1_client"] / results["echo_1_conn"], 3)
    results["ratio_100"] = round(results["send_100_clients"] / results["echo_100_conns"], 3)
    return results


def report(results: dict[str, Any]) -> None:
    idle = results["idle"]
    print(f"open-files limit (soft, hard): {tuple(results['nofile_limit'])}")
    print(
        f"idle Telethon connections held: {idle['server_live_connections']} of "
        f"{idle['requested']} (clients connected {idle['clients_connected']}, "
        f"in {idle['connect_seconds']} s; ledger overlaps {idle['overlaps']})"
    )
    print(
        f"sandbox RSS with them: {idle['server_rss_mb']} MB "
        f"(~{idle['server_kb_per_connection']} KB per connection)"
    )
    head = ("sandbox sendMessage/s", "(server CPU)", "echo/s", "(CPU)", "ratio")
    print(f"{'':14}{head[0]:>22}{head[1]:>14}{head[2]:>10}{head[3]:>8}{head[4]:>8}")
    for label, ours, echo, ratio in (
        ("1 client", "send_1_client", "echo_1_conn", "ratio_1"),
        ("100 clients", "send_100_clients", "echo_100_conns", "ratio_100"),
    ):
        print(
            f"{label:14}{results[ours]:>22}{results[ours + '_server_cpu']:>14}"
            f"{results[echo]:>10}{results[echo + '_server_cpu']:>8}{results[ratio]:>8}"
        )
    print(json.dumps(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=2000, help="idle connections to hold")
    parser.add_argument("--idle-procs", type=int, default=4, help="client processes holding them")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each rate run")
    parser.add_argument("--uvloop", action="store_true", help="run the sandbox on uvloop")
    parser.add_argument(
        "--send-procs", type=int, default=1, help="client processes for the 100-client run"
    )
    parser.add_argument(
        "--role", choices=["main", "idle-worker", "send-worker", "echo-server"], default="main"
    )
    args = parser.parse_args()
    if args.role == "idle-worker":
        asyncio.run(idle_worker(json.loads(sys.stdin.readline())))
    elif args.role == "send-worker":
        asyncio.run(send_worker(json.loads(sys.stdin.readline()), args.seconds))
    elif args.role == "echo-server":
        asyncio.run(echo_server())
    else:
        report(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
