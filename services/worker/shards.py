"""Telegram shard ownership: leases, balance, cooperative hand-off and self-fencing.

Accounts map to S shard queues (``shared.jobs.routing``). A worker runs one consumer per
shard whose lease it holds, so an account's session is connected from one worker only
(invariant 3). A lease is a Redis key ``tgflow:lease:shard:{n}`` holding
``owner|token``; the token comes from one cluster-wide counter, so every grant of every
shard is numbered and a stale owner can always be told from the current one.

- **Renewal.** All held leases are renewed in one script call every ``ttl / 4``; a
  lease found in another's hands is given up at once.
- **Self-fencing.** A lease renewed at monotonic time ``t`` cannot lapse before
  ``t + ttl``. If no renewal has succeeded by ``t + ttl - margin``, the worker stops the
  shard's jobs and disconnects its clients without waiting for Redis, so it is off the
  network before anyone else can be granted the shard.
- **Balance.** Each worker aims at ``ceil(S / live workers)`` shards. One over its share
  hands shards off cooperatively: it stops taking the shard's jobs, lets running ones
  finish for ``handoff`` seconds and hands the rest back to the queue, disconnects the
  shard's clients, and only then deletes the lease and marks the shard released. A
  worker under its share takes free shards.
- **Crashes.** A shard whose lease lapsed without a release (its owner died or fenced
  itself off) is an orphan: any worker takes it at once, whatever its share, and the
  shares even out again through hand-offs once the registry has caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.worker import metrics
from services.worker.consumer import Consumer
from services.worker.state import WorkerState
from shared import registry
from shared.aio import raise_if_cancelling
from shared.jobs import QueueKind
from shared.jobs.routing import shard_lease_key, shard_of, shard_queue
from shared.logs import get_logger

log = get_logger(__name__)

STATE_KEY = "tgflow:shards:state"  # shard -> "owner|token" of its last grant, or "released"
FENCE_KEY = "tgflow:shards:fence"
COUNT_KEY = "tgflow:shards:count"
CHANGED_CHANNEL = "tgflow:shards:changed"
RELEASED = "released"


_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('INCR', KEYS[2])
local value = ARGV[1] .. '|' .. token
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
redis.call('HSET', KEYS[3], ARGV[3], value)
return token
"""

_RENEW = """
local out = {}
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i + 1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2], ARGV[2], 'released')
return 1
"""


class ShardCountMismatch(RuntimeError):
    pass


async def agree_shard_count(redis: Redis, shards: int) -> None:
    """Record the cluster's shard count, or refuse to run with a different one.

    Accounts are placed by ``hash % S``: processes disagreeing on S would route jobs to
    queues nobody consumes.
    """
    await redis.set(COUNT_KEY, shards, nx=True)
    recorded = int(await redis.get(COUNT_KEY) or shards)
    if recorded != shards:
        raise ShardCountMismatch(
            f"TGFLOW_TELEGRAM_SHARDS is {shards} but this Redis serves {recorded} shards; "
            "every process must use the same count"
        )


@dataclass
class Held:
    shard: int
    token: int
    value: str
    consumer: Consumer
    task: asyncio.Task[None]
    fence_at: float  # monotonic: past this without a renewal, stop using the shard
    leaving: bool = False
    # Drained and being disconnected: nothing may connect its accounts any more (not even
    # validation or recovery, which the drain does not stop), though the lease is ours.
    releasing: bool = False


def _preference(owner: str, shard: int) -> bytes:
    """Order in which a worker tries free shards, different for each worker."""
    return hashlib.blake2b(f"{owner}:{shard}".encode(), digest_size=8).digest()


class ShardManager:
    """The Telegram shards one worker holds, and the consumers that serve them."""

    def __init__(
        self,
        state: WorkerState,
        make_consumer: Callable[[int], Consumer],
    ) -> None:
        settings = state.settings
        self.state = state
        self.redis = state.redis
        self.owner = state.instance_id
        self.count = settings.telegram_shards
        self.ttl = settings.shard_lease_seconds
        self.margin = self.ttl / 3  # time left to get off the network before a lapse
        self.handoff_s = settings.shard_handoff_seconds
        self.make_consumer = make_consumer
        self.held: dict[int, Held] = {}
        self._poke = asyncio.Event()
        self._leaving: set[asyncio.Task[None]] = set()
        self._closing = False
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._renew_all = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)

    # -- what the rest of the worker asks -------------------------------------------

    def usable(self, shard: int) -> bool:
        """Whether this worker may use the shard's clients right now."""
        held = self.held.get(shard)
        return held is not None and not held.releasing and time.monotonic() < held.fence_at

    def may_use(self, account_id: uuid.UUID) -> bool:
        return self.usable(shard_of(account_id, self.count))

    def shards(self) -> list[int]:
        return sorted(self.held)

    def wake(self, shard: str) -> None:
        """A job arrived in a shard's queue (``*``: look at every held shard)."""
        if shard == "*":
            self.wake_all()
            return
        with contextlib.suppress(ValueError):
            held = self.held.get(int(shard))
            if held is not None:
                held.consumer.wake()

    def wake_all(self) -> None:
        for held in self.held.values():
            held.consumer.wake()

    def poke(self) -> None:
        """Ownership changed somewhere: look at the balance now."""
        self._poke.set()

    # -- the loop -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Renew, fence and balance until ``stop`` is set (then call ``shutdown``)."""
        watchdog = asyncio.create_task(self._watch(stop), name="shard-fence")
        tick = self.ttl / 4
        try:
            while not stop.is_set():
                await self._tick()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wait(stop), tick)
                self._poke.clear()
        finally:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)

    async def _wait(self, stop: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._poke.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _tick(self) -> None:
        try:
            await self.renew()
            await self.balance()
        except (RedisError, OSError) as exc:
            raise_if_cancelling()
            log.warning("shard upkeep failed", error=type(exc).__name__, held=len(self.held))
        metrics.SHARDS_HELD.set(len(self.held))

    async def _watch(self, stop: asyncio.Event) -> None:
        """Fence off every shard whose lease could lapse before we renew it."""
        while not stop.is_set():
            now = time.monotonic()
            for shard, held in list(self.held.items()):
                if now >= held.fence_at:
                    await self._fence(shard, held, "lease not renewed in time")
            await asyncio.sleep(min(0.2, self.margin / 4))

    async def renew(self) -> None:
        if not self.held:
            return
        shards = list(self.held)
        sent = time.monotonic()
        values = [self.held[n].value for n in shards]
        results = await self._renew_all(
            keys=[shard_lease_key(n) for n in shards], args=[int(self.ttl * 1000), *values]
        )
        for shard, value, ok in zip(shards, values, cast(list[int], results), strict=True):
            held = self.held.get(shard)
            if held is None or held.value != value:
                continue
            if ok:
                held.fence_at = sent + self.ttl - self.margin
            else:
                await self._fence(shard, held, "lease lost")

    async def _live_workers(self) -> int:
        live = await registry.live_instances(self.redis, "worker")
        ids = {w["id"] for w in live if QueueKind.TELEGRAM.value in w.get("queues", "").split(",")}
        ids.add(self.owner)
        return len(ids)

    async def balance(self) -> None:
        """Take orphans, then move towards this worker's share of the shards."""
        if self._closing:
            return
        share = math.ceil(self.count / await self._live_workers())
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.mget([shard_lease_key(n) for n in range(self.count)])
            pipe.hgetall(STATE_KEY)
            leases, last = await pipe.execute()
        free = [n for n, v in enumerate(leases) if v is None and n not in self.held]
        orphans = [n for n in free if last.get(str(n), RELEASED) != RELEASED]
        for shard in orphans:
            await self._take(shard)
        mine = [n for n, h in self.held.items() if not h.leaving]
        if len(mine) > share:
            idle_first = sorted(mine, key=lambda n: (len(self.held[n].consumer.tasks), -n))
            for shard in idle_first[: len(mine) - share]:
                self._start_handoff(shard)
            return
        released = sorted(set(free) - set(orphans), key=lambda n: _preference(self.owner, n))
        for shard in released[: share - len(mine)]:
            await self._take(shard)

    async def _take(self, shard: int) -> None:
        asked = time.monotonic()  # the lease's time runs from when Redis may have set it
        token = int(
            await self._acquire(
                keys=[shard_lease_key(shard), FENCE_KEY, STATE_KEY],
                args=[self.owner, int(self.ttl * 1000), shard],
            )
        )
        if not token:
            return
        if self._closing:  # shutting down meanwhile: give it straight back
            await self._release(
                keys=[shard_lease_key(shard), STATE_KEY], args=[f"{self.owner}|{token}", shard]
            )
            return
        consumer = self.make_consumer(shard)
        task = asyncio.create_task(consumer.run_forever(), name=f"consume-shard-{shard}")
        self.held[shard] = Held(
            shard=shard,
            token=token,
            value=f"{self.owner}|{token}",
            consumer=consumer,
            task=task,
            fence_at=asked + self.ttl - self.margin,
        )
        metrics.SHARD_CHANGES.labels("acquired").inc()
        log.info("shard acquired", shard=shard, token=token)

    # -- giving shards up -----------------------------------------------------------

    def _start_handoff(self, shard: int, grace: float | None = None) -> None:
        held = self.held[shard]
        held.leaving = True
        grace = self.handoff_s if grace is None else grace
        task = asyncio.create_task(self._handoff(shard, held, grace), name=f"handoff-{shard}")
        self._leaving.add(task)
        task.add_done_callback(self._leaving.discard)

    async def _handoff(self, shard: int, held: Held, grace: float) -> None:
        """Stop, drain, disconnect, and only then release (cooperative hand-off)."""
        start = time.monotonic()
        try:
            await held.consumer.drain(grace)
            await asyncio.gather(held.task, return_exceptions=True)
            # From here no new connection: one already under way has its pool entry, so
            # the disconnect below closes it too, before the lease is given up.
            held.releasing = True
            await self._disconnect(shard, "handoff")
        finally:
            fenced = self.held.get(shard) is not held  # then the lease is not ours to release
            if not fenced:
                del self.held[shard]
        if fenced:
            return
        try:
            await self._release(keys=[shard_lease_key(shard), STATE_KEY], args=[held.value, shard])
            await self.redis.publish(CHANGED_CHANNEL, self.owner)
        except (RedisError, OSError) as exc:
            raise_if_cancelling()
            log.warning("shard release not recorded", shard=shard, error=type(exc).__name__)
        metrics.SHARD_CHANGES.labels("released").inc()
        log.info("shard handed off", shard=shard, seconds=round(time.monotonic() - start, 3))

    async def _fence(self, shard: int, held: Held, reason: str) -> None:
        """Get off the network for this shard now, without waiting for Redis."""
        if self.held.get(shard) is not held:
            return
        del self.held[shard]
        consumer = held.consumer
        consumer.allow_pick_jobs = False
        for task in consumer.tasks.values():
            task.cancel()
        await self._disconnect(shard, "fenced")
        drain = asyncio.create_task(consumer.drain(0))
        self._leaving.add(drain)
        drain.add_done_callback(self._leaving.discard)
        metrics.SHARD_CHANGES.labels("fenced").inc()
        log.warning("shard fenced off", shard=shard, reason=reason, token=held.token)

    async def _disconnect(self, shard: int, reason: str) -> None:
        await self.state.telegram.pool.drop_matching(
            lambda account_id: shard_of(account_id, self.count) == shard, reason=reason
        )

    async def shutdown(self, grace: float) -> None:
        """Hand every shard off (SIGTERM): drain for ``grace`` s, disconnect, release.

        ``run`` must still be going: the leases stay renewed (or fenced) meanwhile.
        """
        self._closing = True
        while self.held or self._leaving:
            for shard, held in list(self.held.items()):
                if not held.leaving:
                    self._start_handoff(shard, grace)
            if self._leaving:
                await asyncio.gather(*list(self._leaving), return_exceptions=True)
            else:
                await asyncio.sleep(0.01)
        metrics.SHARDS_HELD.set(len(self.held))


# A worker may hold dozens of shard queues: their fallback poll is slower, since nudges
# wake them for new jobs and each poll sleeps exactly until its next deferred job is due.
SHARD_POLL_FLOOR_S = 2.0


def shard_consumer_factory(
    state: WorkerState, functions: list[Any], slots: asyncio.BoundedSemaphore
) -> Callable[[int], Consumer]:
    def make(shard: int) -> Consumer:
        return Consumer(
            state,
            QueueKind.TELEGRAM,
            functions,
            concurrency=state.settings.worker_concurrency,
            queue_name=shard_queue(shard),
            slots=slots,
            poll_delay=max(state.settings.worker_poll_delay, SHARD_POLL_FLOOR_S),
        )

    return make
