"""Waiting out a step that a cancel must not cut; waits that a stop cuts short."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from shared.aio import message_unless, outlast_cancellation, unless_stopped


async def test_a_cancel_waits_for_the_step_and_is_reported() -> None:
    step = asyncio.ensure_future(asyncio.sleep(0.2, result="done"))

    async def waiting() -> tuple[bool, str]:
        came = await outlast_cancellation(step)
        return came, step.result()

    waiter = asyncio.ensure_future(waiting())
    await asyncio.sleep(0.05)
    waiter.cancel()
    await asyncio.sleep(0.01)
    waiter.cancel()  # a second cancel is withdrawn as well
    assert await waiter == (True, "done")
    assert not step.cancelled()


async def test_the_steps_own_failure_or_cancel_is_no_cancel_of_the_waiter() -> None:
    async def failing() -> None:
        await asyncio.sleep(0.01)
        raise ValueError("refused")

    failed = asyncio.ensure_future(failing())
    assert await outlast_cancellation(failed) is False
    with pytest.raises(ValueError, match="refused"):
        failed.result()
    stopped = asyncio.ensure_future(asyncio.sleep(10))
    asyncio.get_running_loop().call_later(0.01, stopped.cancel)
    assert await outlast_cancellation(stopped) is False
    assert stopped.cancelled()


async def test_a_stop_ends_a_quiet_channels_wait_at_once_and_a_message_comes_first(
    redis: Redis,
) -> None:
    """``message_unless``: a message published is read; on a quiet channel a stop ends the
    wait (of 5 s here) as soon as it is set, and a stop already set reads nothing new."""
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe("tgflow:test:quiet")
    try:
        stop = asyncio.Event()
        await redis.publish("tgflow:test:quiet", "hello")
        message = await message_unless(pubsub, stop, 5.0)
        assert message is not None
        assert message["data"] == "hello"
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, stop.set)
        started = loop.time()
        assert await message_unless(pubsub, stop, 5.0) is None
        assert loop.time() - started < 2.0  # the stop, not the 5 s
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_unless_stopped_gives_the_result_or_none_and_never_leaves_work_running() -> None:
    stop = asyncio.Event()
    assert await unless_stopped(asyncio.sleep(0.01, result="done"), stop) == "done"
    cut = asyncio.ensure_future(asyncio.sleep(5))
    asyncio.get_running_loop().call_later(0.05, stop.set)
    assert await unless_stopped(cut, stop) is None
    assert cut.cancelled()
    stopped_already = asyncio.sleep(5)
    assert await unless_stopped(stopped_already, stop) is None  # closed, never started

    async def failing() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await unless_stopped(failing(), asyncio.Event())
