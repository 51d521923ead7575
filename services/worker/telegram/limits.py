"""Shared flood state and proactive send budgets, both in Redis.

A FLOOD_WAIT seen by any worker blocks that (account, method) for every worker until
it ends, and a SLOWMODE_WAIT that (account, chat); jobs meeting either are deferred
without a network call. Send budgets are token
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

# Take one token from both buckets, or from neither; answer how long to wait (ms). With
# flood keys given (KEYS[3], the method's; KEYS[4], the chat's slow mode) and a wait
# recorded there, take nothing and answer the latest wait's end instead as a negative
# number (its epoch seconds, negated): one round trip decides whether a send may go now.
_TAKE = """
local latest = nil
for i = 3, 4 do
  local flood = KEYS[i] and redis.call('GET', KEYS[i])
  if flood and (not latest or tonumber(flood) > tonumber(latest)) then latest = flood end
end
if latest then return '-' .. latest end
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


def slow_mode_key(account_id: uuid.UUID, peer: str) -> str:
    """A chat's slow mode holds this account's sends to that chat only."""
    return f"tgflow:flood:{account_id}:slowmode:{peer}"


# Record a wait, unless a later one is already recorded (a short wait met after a long
# one must not shorten it). ARGV: the end (epoch seconds), its TTL (ms). Answers the end
# that holds.
_RECORD = """
local current = redis.call('GET', KEYS[1])
if current and tonumber(current) >= tonumber(ARGV[1]) then return current end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"""


class Limits:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._take = redis.register_script(_TAKE)
        self._record = redis.register_script(_RECORD)
        self._batch = AutoPipeline(redis)  # the gates of sends made together share a trip

    async def flood_until(self, account_id: uuid.UUID, method: str) -> datetime | None:
        """When a recorded flood wait for this account and method ends, if it has not."""
        value = await self.redis.get(flood_key(account_id, method))
        if value is None:
            return None
        until = datetime.fromtimestamp(float(value), UTC)
        return until if until > datetime.now(UTC) else None

    async def record_flood(
        self, account_id: uuid.UUID, method: str, seconds: int, *, peer: str | None = None
    ) -> datetime:
        """Record a wait for (account, method), or with ``peer`` a slow mode for
        (account, chat); answers when the wait that now holds ends."""
        key = flood_key(account_id, method) if peer is None else slow_mode_key(account_id, peer)
        until = time.time() + max(1, seconds)
        held = await self._record(keys=[key], args=[repr(until), max(1, seconds) * 1000])
        return datetime.fromtimestamp(float(held), UTC)

    async def gate_send(
        self, account_id: uuid.UUID, peer: str, method: str | None, budget: SendBudget
    ) -> tuple[float, datetime | None]:
        """One round trip before a send: (seconds to wait for the budget, flood end).

        With ``method``, a flood wait recorded for it, or a slow mode recorded for this
        chat, wins and no token is spent.
        """
        keys = [f"tgflow:budget:{account_id}", f"tgflow:budget:{account_id}:{peer}"]
        if method is not None:
            keys += [flood_key(account_id, method), slow_mode_key(account_id, peer)]
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
