"""Diagnostic handlers: echo and a cancellable sleep."""

from __future__ import annotations

import asyncio
import time

from services.worker.context import JobContext
from shared.jobs.system import EchoParams, SleepParams, SleepResult


async def echo(ctx: JobContext, params: EchoParams) -> EchoParams:
    """Return the params unchanged."""
    return params


async def sleep(ctx: JobContext, params: SleepParams) -> SleepResult:
    """Sleep; cancellation interrupts it at once."""
    start = time.monotonic()
    await asyncio.sleep(params.seconds)
    return SleepResult(slept=round(time.monotonic() - start, 6))
