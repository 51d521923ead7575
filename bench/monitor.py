"""Monitor benchmarks: rule evaluation at scale, and the monitor's own CPU.

    .venv/bin/python bench/monitor.py eval [--rules 1000] [--series 10000] [--cycles 30]
    .venv/bin/python bench/monitor.py cpu [--seconds 300] [--interval 15]

eval: 10,000 series (100 metrics x 100 label sets, 15 minutes of history at 15 s) and
1,000 rules mixing plain selectors, equality and regex matchers, rate/increase/delta
and *_over_time windows and sum/max by aggregations, about 5 % of them matching. One
cycle is what the monitor does each interval after collecting: ingest a sample for
every series, evaluate every rule and advance the alert state machine. Pinned to one
core; times are CPU time of this process (process_time) and wall time.

cpu: a real `tgflow monitor` process with the shipped rules at the given interval,
next to a real worker and gateway it discovers and scrapes, on a scratch database and
Redis database; its CPU use (user + system) over the run, from /proc via psutil.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.monitor.lifecycle import Tracker  # noqa: E402
from services.monitor.rules.evaluate import Sources, evaluate_rule  # noqa: E402
from services.monitor.rules.loader import rules_from_data  # noqa: E402
from services.monitor.samples import Sample  # noqa: E402
from services.monitor.store import SeriesStore  # noqa: E402
from shared.db import migrate  # noqa: E402

STEP = 15.0
HISTORY = 60  # points per series: 15 minutes at 15 s


def make_series(count: int, metrics: int) -> list[tuple[str, dict[str, str], float]]:
    """``count`` series over ``metrics`` names; half gauges in [0, 1), half counters."""
    per = count // metrics
    out = []
    for m in range(metrics):
        kind = "total" if m % 2 else "ratio"
        for i in range(per):
            labels = {
                "instance": f"worker-{i % 25}",
                "queue": ("ai", "control", "telegram")[i % 3],
                "shard": str(i),
            }
            out.append((f"bench_{kind}_{m}", labels, random.random()))
    return out


def make_rules(count: int, metrics: int) -> list[dict[str, Any]]:
    """A mix of rule shapes; thresholds chosen so about 5 % of selected series match."""
    shapes = [
        'bench_ratio_{m}{{queue="ai"}} > 0.95',
        'bench_ratio_{m}{{instance=~"worker-1.*"}} > 0.95',
        "bench_ratio_{m} > 0.95",
        'avg_over_time(bench_ratio_{m}{{queue="control"}}[5m]) > 0.606',
        'max by (instance) (bench_ratio_{m}{{queue!="telegram"}}) > 0.981',
        'rate(bench_total_{n}{{instance="worker-3"}}[5m]) > 1.21',
        'increase(bench_total_{n}{{queue="ai"}}[1m]) > 93',
        "sum by (queue) (rate(bench_total_{n}[5m])) > 33.7",
        'delta(bench_total_{n}{{shard=~"1.?"}}[10m]) > 675',
        'min_over_time(bench_ratio_{m}{{instance="worker-7"}}[15m]) < 0.00085',
    ]
    rules = []
    for i in range(count):
        m = (i * 2) % metrics
        shape = shapes[i % len(shapes)].format(m=m, n=m + 1)
        rules.append(
            {
                "name": f"Rule{i}",
                "expr": shape,
                "for": "1m" if i % 3 else "0s",
                "severity": ("info", "warning", "critical", "emergency")[i % 4],
                "annotations": {"summary": "{{ $labels.instance }} is at {{ $value | humanize }}"},
            }
        )
    return rules


def run_eval(args: argparse.Namespace) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    random.seed(7)
    series = make_series(args.series, args.metrics)
    rules = rules_from_data({"rules": make_rules(args.rules, args.metrics)}, "bench")
    store = SeriesStore(retention=15 * 60 + 2 * STEP)
    counters = {i: 0.0 for i in range(len(series))}

    def batch() -> list[Sample]:
        out = []
        for i, (name, labels, _) in enumerate(series):
            if "_total_" in name:
                counters[i] += random.random() * 30
                value = counters[i]
            else:
                value = random.random()
            out.append(Sample(name, value, labels))
        return out

    now = 0.0
    for _ in range(HISTORY):  # warm history, not timed
        now += STEP
        store.ingest("bench", batch(), now)
    tracker = Tracker()
    sources = Sources(failed={}, absent={}, produces={})
    cpu: list[float] = []
    wall: list[float] = []
    ingest: list[float] = []
    matched = 0
    for _ in range(args.cycles):
        now += STEP
        samples = batch()
        t0 = time.process_time()
        store.ingest("bench", samples, now)
        store.prune(now)
        ingest.append(time.process_time() - t0)
        c0, w0 = time.process_time(), time.perf_counter()
        matched = 0
        for rule in rules:
            result = evaluate_rule(rule, store, sources, now)
            matched += len(result.matches)
            tracker.apply(rule, result, now)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        tracker.drain()

    def ms(values: list[float], q: float) -> float:
        ranked = sorted(values)
        return ranked[min(len(ranked) - 1, int(len(ranked) * q))] * 1000

    print(f"rules={len(rules)} series={len(series)} points/series={HISTORY} cycles={args.cycles}")
    print(f"matching series per cycle: {matched}; open alerts: {len(tracker.open)}")
    print(
        f"evaluate + state machine, CPU ms: median {ms(cpu, 0.5):.1f}, p95 {ms(cpu, 0.95):.1f}, "
        f"max {max(cpu) * 1000:.1f}; wall median {ms(wall, 0.5):.1f}"
    )
    median_ingest = statistics.median(ingest) * 1000
    print(f"ingest + prune of {len(series)} samples, CPU ms: median {median_ingest:.1f}")


async def scratch_database(admin: str, name: str) -> str:
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = urlunsplit(urlsplit(admin)._replace(path=f"/{name}"))
    await migrate(url)
    return url


async def drop_database(admin: str, name: str) -> None:
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def spawn(kind: str, env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", kind], env=env, cwd=ROOT, stdout=log, stderr=log
    )


def run_cpu(args: argparse.Namespace) -> None:
    admin = os.environ.get(
        "TGFLOW_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    name = "tgflow_bench_monitor"
    database = asyncio.run(scratch_database(admin, name))
    env = {
        **os.environ,
        "TGFLOW_ENV": "development",
        "TGFLOW_DATABASE_URL": database,
        "TGFLOW_REDIS_URL": os.environ.get("TGFLOW_BENCH_REDIS_URL", "redis://127.0.0.1:6379/8"),
        "TGFLOW_MONITOR_INTERVAL": str(args.interval),
        "TGFLOW_MONITOR_PORT": "0",
        "TGFLOW_GATEWAY_PORT": str(args.gateway_port),
        "TGFLOW_LOG_LEVEL": "WARNING",
        "TGFLOW_MIGRATE_ON_START": "false",
    }
    log = tempfile.TemporaryFile()  # noqa: SIM115 - children write to it until the end
    procs = [spawn("worker", env, log), spawn("gateway", env, log)]
    monitor = spawn("monitor", env, log)
    procs.append(monitor)
    try:
        time.sleep(args.warmup)
        watched = psutil.Process(monitor.pid)
        before, started = watched.cpu_times(), time.monotonic()
        time.sleep(args.seconds)
        after, elapsed = watched.cpu_times(), time.monotonic() - started
        rss = watched.memory_info().rss
        used = (after.user - before.user) + (after.system - before.system)
        cycles = args.seconds / args.interval
        print(f"monitor at a {args.interval:g} s interval, shipped rules, 1 worker + 1 gateway")
        print(f"CPU {used:.2f} s over {elapsed:.0f} s = {used / elapsed * 100:.2f} % of one core")
        print(f"per cycle: {used / cycles * 1000:.0f} ms CPU; RSS {rss / 2**20:.0f} MiB")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if any(p.returncode not in (0, -15) for p in procs):
            log.seek(0)
            print(log.read().decode(errors="replace")[-3000:], file=sys.stderr)
        asyncio.run(drop_database(admin, name))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    e = sub.add_parser("eval", help="rule evaluation over many series")
    e.add_argument("--rules", type=int, default=1000)
    e.add_argument("--series", type=int, default=10_000)
    e.add_argument("--metrics", type=int, default=100)
    e.add_argument("--cycles", type=int, default=30)
    c = sub.add_parser("cpu", help="the monitor process's CPU at its interval")
    c.add_argument("--seconds", type=float, default=300)
    c.add_argument("--interval", type=float, default=15)
    c.add_argument("--warmup", type=float, default=20)
    c.add_argument("--gateway-port", type=int, default=18_000)
    args = parser.parse_args()
    run_eval(args) if args.what == "eval" else run_cpu(args)


if __name__ == "__main__":
    main()
