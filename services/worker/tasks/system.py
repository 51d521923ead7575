"""Diagnostic handlers: echo and a cancellable sleep."""

from __future__ import annotations

import asyncio
import time

import orjson

from services.worker.context import JobContext
from shared.jobs.system import EchoParams, SleepParams, SleepResult


async def echo(ctx: JobContext, params: EchoParams) -> EchoParams:
    """Return the params unchanged."""
    return params


async def sleep(ctx: JobContext, params: SleepParams) -> SleepResult:
    """Sleep, reporting progress if asked; cancellation interrupts it at once."""
    start = time.monotonic()
    if params.progress_every is None:
        await asyncio.sleep(params.seconds)
        return SleepResult(slept=round(time.monotonic() - start, 6))
    deadline = start + params.seconds
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(left, params.progress_every))
        elapsed = min(params.seconds, time.monotonic() - start)
        progress = {"elapsed": round(elapsed, 3), "seconds": params.seconds}
        await ctx.report(progress=orjson.dumps(progress).decode())
    return SleepResult(slept=round(time.monotonic() - start, 6))
