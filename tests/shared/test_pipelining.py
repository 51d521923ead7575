"""Script calls of one loop turn share a pipeline, each with its own answer or error."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from shared.pipelining import AutoPipeline
from tests.helpers import free_port

# A fresh script body per test run: never loaded on the server, so the first call
# meets NOSCRIPT and has to load it.
_ECHO = """-- {nonce}
if ARGV[1] == 'boom' then return redis.error_reply('BOOM asked for') end
redis.call('RPUSH', KEYS[1], ARGV[1])
return ARGV[1]
"""


def _counting(redis: Redis) -> list[int]:
    """Count the pipelines ``redis`` opens (each is one round trip here)."""
    opened: list[int] = []
    real = redis.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        opened.append(1)
        return real(*args, **kwargs)

    redis.pipeline = pipeline  # type: ignore[method-assign]
    return opened


async def test_calls_of_one_turn_share_one_round_trip_with_their_own_answers(
    redis: Redis,
) -> None:
    script = redis.register_script(_ECHO.format(nonce=uuid.uuid4()))
    batch = AutoPipeline(redis)
    opened = _counting(redis)
    answers = await asyncio.gather(
        *(batch.run(script, ["log"], [f"m{i}"]) for i in range(50)),
        return_exceptions=True,
    )
    assert answers == [f"m{i}" for i in range(50)]
    # One pipeline met NOSCRIPT (a new script), one more re-ran the calls after loading.
    assert len(opened) == 2
    assert await redis.lrange("log", 0, -1) == [f"m{i}" for i in range(50)]  # in call order
    opened.clear()
    again = await asyncio.gather(*(batch.run(script, ["log"], [f"n{i}"]) for i in range(50)))
    assert again == [f"n{i}" for i in range(50)]
    assert len(opened) == 1  # loaded now: one round trip for fifty calls


async def test_an_error_answer_goes_to_its_own_caller_only(redis: Redis) -> None:
    script = redis.register_script(_ECHO.format(nonce=uuid.uuid4()))
    batch = AutoPipeline(redis)
    answers = await asyncio.gather(
        batch.run(script, ["log"], ["a"]),
        batch.run(script, ["log"], ["boom"]),
        batch.run(script, ["log"], ["b"]),
        return_exceptions=True,
    )
    assert answers[0] == "a"
    assert answers[2] == "b"
    assert isinstance(answers[1], ResponseError)
    assert "BOOM" in str(answers[1])
    assert await redis.lrange("log", 0, -1) == ["a", "b"]


async def test_a_lost_connection_fails_every_call_of_the_batch() -> None:
    dead = Redis(port=free_port(), decode_responses=True)  # nothing listens there
    script = dead.register_script(_ECHO.format(nonce=uuid.uuid4()))
    batch = AutoPipeline(dead)
    try:
        answers = await asyncio.gather(
            *(batch.run(script, ["log"], [str(i)]) for i in range(3)), return_exceptions=True
        )
    finally:
        await dead.aclose()
    assert all(isinstance(a, RedisConnectionError | OSError) for a in answers), answers


async def test_a_caller_that_gives_up_does_not_break_the_batch(redis: Redis) -> None:
    script = redis.register_script(_ECHO.format(nonce=uuid.uuid4()))
    batch = AutoPipeline(redis)
    await batch.run(script, ["warm"], ["x"])  # loaded
    quitter = asyncio.ensure_future(batch.run(script, ["log"], ["a"]))
    stayer = asyncio.ensure_future(batch.run(script, ["log"], ["b"]))
    await asyncio.sleep(0)
    quitter.cancel()
    assert await stayer == "b"
    with pytest.raises(asyncio.CancelledError):
        await quitter


async def test_a_batch_publishes_each_distinct_message_once_after_its_scripts(
    redis: Redis,
) -> None:
    script = redis.register_script(_ECHO.format(nonce=uuid.uuid4()))
    batch = AutoPipeline(redis)
    await batch.run(script, ["warm"], ["loaded"])
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe("wake")
    try:
        answers = await asyncio.gather(
            *(
                batch.run(script, ["log"], [f"m{i}"], then_publish=("wake", f"q{i % 2}"))
                for i in range(50)
            )
        )
        assert answers == [f"m{i}" for i in range(50)]
        seen = []
        deadline = asyncio.get_running_loop().time() + 0.5
        while asyncio.get_running_loop().time() < deadline:
            message = await pubsub.get_message(timeout=0.1)  # None for the subscription too
            if message is not None:
                # Every script of the batch had run when its wake-up went out.
                seen.append((message["data"], await redis.llen("log")))
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert seen == [("q0", 50), ("q1", 50)]
