"""Shared flood state and proactive send budgets, both in Redis.

A FLOOD_WAIT seen by any worker blocks that (account, method) for every worker until
it ends; jobs meeting it are deferred without a network call. Send budgets are token
buckets per account and per (account, peer), spent before each send so a burst of jobs
is paced below Telegram's limits instead of provoking floods.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from redis.asyncio import Redis

# Take one token from both buckets, or from neither; answer how long to wait (ms).
_TAKE = """
local now = tonumber(ARGV[1])
local waits = {}
local state = {}
for i = 1, 2 do
  local rate = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  local b = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local tokens = tonumber(b[1]) or burst
  local ts = tonumber(b[2]) or now
  tokens = math.min(burst, tokens + (now - ts) / 1000 * rate)
  state[i] = tokens
  if tokens < 1 then waits[#waits + 1] = math.ceil((1 - tokens) / rate * 1000) end
end
if #waits > 0 then
  return math.max(unpack(waits))
end
for i = 1, 2 do
  local rate = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  redis.call('HSET', KEYS[i], 'tokens', state[i] - 1, 'ts', now)
  redis.call('PEXPIRE', KEYS[i], math.ceil(burst / rate * 1000) + 1000)
end
return 0
"""


def flood_key(account_id: uuid.UUID, method: str) -> str:
    return f"tgflow:flood:{account_id}:{method}"


class Limits:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._take = redis.register_script(_TAKE)

    async def flood_until(self, account_id: uuid.UUID, method: str) -> datetime | None:
        """When a recorded flood wait for this account and method ends, if it has not."""
        value = await self.redis.get(flood_key(account_id, method))
        if value is None:
            return None
        until = datetime.fromtimestamp(float(value), UTC)
        return until if until > datetime.now(UTC) else None

    async def record_flood(self, account_id: uuid.UUID, method: str, seconds: int) -> datetime:
        until = time.time() + max(1, seconds)
        await self.redis.set(flood_key(account_id, method), repr(until), px=max(1, seconds) * 1000)
        return datetime.fromtimestamp(until, UTC)

    async def take_send(
        self,
        account_id: uuid.UUID,
        peer: str,
        *,
        rate: float,
        burst: int,
        peer_rate: float,
        peer_burst: int,
    ) -> float:
        """Spend one send token; 0 when allowed, else the seconds to wait."""
        wait_ms = await self._take(
            keys=[f"tgflow:budget:{account_id}", f"tgflow:budget:{account_id}:{peer}"],
            args=[int(time.time() * 1000), rate, burst, peer_rate, peer_burst],
        )
        return int(wait_ms) / 1000
