"""Small asyncio helpers."""

from __future__ import annotations

import asyncio


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
