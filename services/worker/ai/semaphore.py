"""A cluster-wide counting semaphore per provider: leases in a Redis sorted set.

Members are holder ids scored by their lease expiry (Redis server time, so worker
clocks do not matter). Acquiring first drops expired holders, so a slot held by a
worker that died comes back after one lease; a running call renews its lease.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.worker.ai import metrics
from services.worker.ai.lua import script
from shared.logs import get_logger

log = get_logger(__name__)

# Functions over a holders sorted set; ``now`` comes from lua.NOW.
FUNCTIONS = """
local function sem_acquire(key, limit, lease, holder)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZSCORE', key, holder) then
    redis.call('ZADD', key, now + lease, holder)
    return 1, redis.call('ZCARD', key)
  end
  local held = redis.call('ZCARD', key)
  if held >= limit then return 0, held end
  redis.call('ZADD', key, now + lease, holder)
  redis.call('PEXPIRE', key, lease * 2)
  return 1, held + 1
end
local function sem_release(key, holder)
  redis.call('ZREM', key, holder)
  return redis.call('ZCARD', key)
end
"""

# KEYS[1] holders; ARGV: limit, lease ms, holder. Returns {acquired 0/1, holders}.
_ACQUIRE = script(
    FUNCTIONS,
    """
local ok, held = sem_acquire(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3])
return {ok, held}
""",
)

# KEYS[1] holders; ARGV: lease ms, holder. Returns 1 if still held (and extended).
_RENEW = script(
    """
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return 1
"""
)

_RELEASE = script(FUNCTIONS, "return sem_release(KEYS[1], ARGV[1])")


def holders_key(provider: str) -> str:
    return f"tgflow:ai:sem:{provider}"


class Waiters:
    """Jobs in this process waiting for a slot; a local release wakes the first one."""

    def __init__(self) -> None:
        self._queue: deque[asyncio.Future[None]] = deque()

    async def wait(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(future)
        try:
            await asyncio.wait_for(future, seconds)
        except TimeoutError:
            pass
        finally:
            with contextlib.suppress(ValueError):
                self._queue.remove(future)

    def __len__(self) -> int:
        return len(self._queue)

    def wake_one(self) -> None:
        while self._queue:
            future = self._queue.popleft()
            if not future.done():
                future.set_result(None)
                return


class Semaphore:
    """Slots per provider shared by every worker of the cluster."""

    def __init__(self, redis: Redis, lease_seconds: float) -> None:
        self.redis = redis
        self.lease_ms = int(lease_seconds * 1000)
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self.waiters: dict[str, Waiters] = {}

    def local(self, provider: str) -> Waiters:
        return self.waiters.setdefault(provider, Waiters())

    async def try_acquire(self, provider: str, limit: int, holder: str) -> bool:
        acquired, held = await self._acquire(
            keys=[holders_key(provider)], args=[limit, self.lease_ms, holder]
        )
        metrics.SEMAPHORE_IN_USE.labels(provider).set(int(held))
        return bool(acquired)

    async def renew(self, provider: str, holder: str) -> bool:
        return bool(await self._renew(keys=[holders_key(provider)], args=[self.lease_ms, holder]))

    async def release(self, provider: str, holder: str) -> None:
        held = await self._release(keys=[holders_key(provider)], args=[holder])
        metrics.SEMAPHORE_IN_USE.labels(provider).set(int(held))
        self.local(provider).wake_one()

    async def keep_renewed(self, provider: str, holder: str) -> None:
        """Extend the lease every third of its length until cancelled."""
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                if not await self.renew(provider, holder):
                    log.warning("ai slot lease lost", provider=provider)
                    return
            except RedisError as exc:  # ride out a Redis blip
                log.warning("ai slot renewal failed", provider=provider, error=type(exc).__name__)
