"""Waiting out a step that a cancel must not cut."""

from __future__ import annotations

import asyncio

import pytest

from shared.aio import outlast_cancellation


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
