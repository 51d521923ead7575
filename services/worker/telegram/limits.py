"""Shared flood state and proactive send budgets, both in Redis.

A FLOOD_WAIT seen by any worker blocks that (account, method) for every worker until
it ends; jobs meeting it are deferred without a network call. Send budgets are token
buckets per account and per (account, peer), spent before each send so a burst of jobs
is paced below Telegram's limits instead of provoking floods.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.asyncio import Redis

from shared.pipelining import AutoPipeline

# Take one token from both buckets, or from neither; answer how long to wait (ms). With a
# flood key given (KEYS[3]) and a flood wait recorded there, take nothing and answer the
# flood's end instead as a negative number (its epoch seconds, negated): one round trip
# decides whether a send may go now.
_TAKE = """
if KEYS[3] then
  local flood = redis.call('GET', KEYS[3])
  if flood then return '-' .. flood end
end
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


@dataclass(frozen=True)
class SendBudget:
    """Token buckets for sends: per account, and per (account, peer)."""

    rate: float
    burst: int
    peer_rate: float
    peer_burst: int


def flood_key(account_id: uuid.UUID, method: str) -> str:
    return f"tgflow:flood:{account_id}:{method}"


class Limits:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._take = redis.register_script(_TAKE)
        self._batch = AutoPipeline(redis)  # the gates of sends made together share a trip

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

    async def gate_send(
        self, account_id: uuid.UUID, peer: str, method: str | None, budget: SendBudget
    ) -> tuple[float, datetime | None]:
        """One round trip before a send: (seconds to wait for the budget, flood end).

        With ``method``, a flood wait recorded for it wins and no token is spent.
        """
        keys = [f"tgflow:budget:{account_id}", f"tgflow:budget:{account_id}:{peer}"]
        if method is not None:
            keys.append(flood_key(account_id, method))
        answer = await self._batch.run(
            self._take,
            keys,
            [
                int(time.time() * 1000),
                budget.rate,
                budget.burst,
                budget.peer_rate,
                budget.peer_burst,
            ],
        )
        text = answer.decode() if isinstance(answer, bytes) else str(answer)
        if text.startswith("-"):
            until = datetime.fromtimestamp(float(text[1:]), UTC)
            if until > datetime.now(UTC):
                return 0.0, until
            return await self.gate_send(account_id, peer, None, budget)  # it just ended
        return int(text) / 1000, None
