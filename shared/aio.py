"""Small asyncio helpers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


async def sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; return True at once if ``stop`` is (or becomes) set."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def unless_stopped(work: Awaitable[T], stop: asyncio.Event) -> T | None:
    """``work``'s result, or None as soon as ``stop`` is (or becomes) set, ``work`` then
    cancelled: a stopping process does not wait out a blocking read of a quiet channel
    or stream. (redis-py closes the connection of a read it cuts short.)"""
    if stop.is_set():
        if asyncio.iscoroutine(work):
            work.close()  # never started
        return None
    doing = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((doing, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not doing.done():
            doing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await doing
    return None if doing.cancelled() else doing.result()


async def message_unless(pubsub: Any, stop: asyncio.Event, seconds: float) -> Any:
    """``pubsub.get_message`` waiting up to ``seconds``, or None as soon as ``stop`` is
    set (``unless_stopped``). A message there already is read with no wait and no task:
    the busy path stays as cheap as a plain read."""
    message = await pubsub.get_message(timeout=0.0)
    if message is not None or seconds <= 0:
        return message
    return await unless_stopped(pubsub.get_message(timeout=seconds), stop)


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
