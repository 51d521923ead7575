"""Small asyncio helpers."""

from __future__ import annotations

import asyncio
from typing import Any


async def sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; return True at once if ``stop`` is (or becomes) set."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


def raise_if_cancelling() -> None:
    """Re-raise a cancellation that a library turned into another exception.

    redis-py's socket timeout can surface an outer ``Task.cancel()`` as a
    ``TimeoutError``; loops that ride out Redis errors call this in their handler
    so that stopping them still works.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def outlast_cancellation(future: asyncio.Future[Any]) -> bool:
    """Wait until ``future`` is done, even if this task is cancelled meanwhile.

    Each cancellation that arrives is withdrawn (``Task.uncancel``), so the rest of the
    task runs normally, and ``future`` itself is never cancelled. Returns whether any
    came: the caller decides whether it still takes effect (raise ``CancelledError``)
    or the outcome stands.
    """
    task = asyncio.current_task()
    came = False
    while not future.done():
        try:
            await asyncio.shield(future)  # lighter than asyncio.wait: one outer future
        except asyncio.CancelledError:
            if task is not None and task.cancelling():  # this task's, not the future's
                came = True
                task.uncancel()
        except Exception:  # noqa: S110 - the future's own failure: the caller reads it
            pass
    return came
