"""Script calls made in the same event-loop turn go to Redis as one pipeline.

Under load a worker runs a hundred jobs at once and a gateway serves fifty requests at
once, and each of them calls the same few Lua scripts. A lone call costs its caller a
whole round trip of client work (about ten times the cost of the same command inside a
pipeline, measured in ``docs/benchmarks.md``); here calls queue up until the loop
turns, then leave together, each with its own answer or error.

Calls keep their order within a batch, and a caller that awaits its answer before its
next call sees its calls in order. An error answer (a script's ``redis.error_reply``)
goes to its own caller only; a lost connection fails every call of the batch, as it
would have failed each one alone. Scripts are sent by SHA and loaded on ``NOSCRIPT``
(after a Redis restart), without redis-py's check on every pipeline.

A call may name a message to publish once its script has run (a wake-up for whoever
consumes what the script enqueued). The batch publishes each distinct message once,
after all of its scripts: a hundred jobs submitted together wake their consumers once,
not a hundred times.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

Publish = tuple[str, str]  # channel, message
Call = tuple[AsyncScript, Sequence[Any], Sequence[Any], Publish | None, "asyncio.Future[Any]"]


class AutoPipeline:
    """Coalesces script calls into pipelines, one per loop turn."""

    def __init__(self, redis: Redis, *, max_batch: int = 1000) -> None:
        self.redis = redis
        self.max_batch = max_batch
        self._pending: list[Call] = []
        self._scheduled = False
        self._sending: set[asyncio.Task[None]] = set()

    async def run(
        self,
        script: AsyncScript,
        keys: Sequence[Any],
        args: Sequence[Any],
        *,
        then_publish: Publish | None = None,
    ) -> Any:
        """Run ``script`` as part of this turn's batch; its answer. ``then_publish`` is
        published after the batch's scripts (once, however many calls name it)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((script, keys, args, then_publish, future))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[Call]) -> None:
        try:
            answers = await self._execute(batch)
        except asyncio.CancelledError:
            for *_, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (*_, future), answer in zip(batch, answers, strict=True):
            if future.done():  # its caller gave up waiting
                continue
            if isinstance(answer, Exception):
                future.set_exception(answer)
            else:
                future.set_result(answer)

    async def _execute(self, batch: list[Call]) -> list[Any]:
        answers = await self._pipeline(batch)
        missing = [i for i, answer in enumerate(answers) if isinstance(answer, NoScriptError)]
        if missing:
            for script in {id(batch[i][0]): batch[i][0] for i in missing}.values():
                script.sha = await self.redis.script_load(script.script)
            again = await self._pipeline([batch[i] for i in missing])
            for i, answer in zip(missing, again, strict=True):
                answers[i] = answer
        return answers

    async def _pipeline(self, batch: list[Call]) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for script, keys, args, _, _ in batch:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            for channel, message in dict.fromkeys(c[3] for c in batch if c[3] is not None):
                pipe.publish(channel, message)
            answers: list[Any] = await pipe.execute(raise_on_error=False)
        return answers[: len(batch)]
