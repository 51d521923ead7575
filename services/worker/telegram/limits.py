"""Shared flood state and proactive send budgets, both in Redis.

A FLOOD_WAIT seen by any worker blocks that (account, method) for every worker until
it ends, and a SLOWMODE_WAIT that (account, chat); jobs meeting either are deferred
without a network call. Send budgets, per account and per (account, peer), are spent
before each send so a burst of jobs is paced below Telegram's limits instead of
provoking floods: a job that cannot send now holds a slot of its own and waits once.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.asyncio import Redis

from shared.pipelining import AutoPipeline

# Pace one send: answer how long to wait (ms), 0 for "go now". Each bucket is a GCRA
# schedule (its theoretical arrival time, ``tat``, in a hash): ``burst`` sends may go at
# once, then one per 1/rate. A send that a bucket cannot take now is given that bucket's
# next slot, held for its holder (the job) in the bucket's zset of held slots: the job is
# deferred once to it, and asking again once it is due, goes without contending again. A
# bucket is charged only at its own slot (never at a later one the other bucket imposes,
# which would leave it a hole no send uses): a send that waits on both holds the later
# slot first, and takes the other bucket's (or is given its slot) when it is back; a slot
# held already stays held, moved along, until then.
#
# KEYS: the account's bucket, the chat's bucket, their zsets of held slots, then with a
# method the flood keys (its flood wait, the chat's slow mode). A wait recorded there wins:
# nothing is taken and the latest wait's end is answered as a negative number (its epoch
# seconds, negated). ARGV: now (ms), rate, burst, peer rate, peer burst, holder, horizon
# (ms), how long a held slot is kept past its time (ms). No slot is given further ahead
# than the horizon: a send that would need one holds nothing and is told to come back
# when half the horizon has passed. A held slot stays held until its job is back, however
# late the queue picks it up (a job that lost its slot for coming back late would be
# charged a new one behind every other waiting send, and under a backlog none would ever
# go): the bucket was charged for it at its time. Only a slot whose job never comes back
# (cancelled, or failed before sending) is dropped, ``HELD_SLOT_KEEP`` after its time;
# the most a bucket owes to such jobs is the horizon, the slots held ahead of now.
_TAKE = """
local latest = nil
for i = 5, 6 do
  local flood = KEYS[i] and redis.call('GET', KEYS[i])
  if flood and (not latest or tonumber(flood) > tonumber(latest)) then latest = flood end
end
if latest then return '-' .. latest end
local now = tonumber(ARGV[1])
local holder = ARGV[6]
local horizon = tonumber(ARGV[7])
local keep = tonumber(ARGV[8])
local step, burst, held = {}, {}, {}
local ahead = 0
for i = 1, 2 do
  step[i] = 1000 / tonumber(ARGV[2 * i])
  burst[i] = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i + 2], '-inf', now - keep)
  held[i] = tonumber(redis.call('ZSCORE', KEYS[i + 2], holder))
  if held[i] then ahead = math.max(ahead, held[i] - now) end
end
if ahead > 50 then return math.ceil(ahead) end  -- back before its slot: it keeps it

local function hold(i, at)
  redis.call('ZADD', KEYS[i + 2], at, holder)
  redis.call('PEXPIRE', KEYS[i + 2], math.ceil(2 * horizon + keep) + 2000)
end
local function charge(i, tat)
  redis.call('HSET', KEYS[i], 'tat', tat)
  redis.call('PEXPIRE', KEYS[i], math.ceil(tat - now) + 1000)
end

local tat, allow, last = {}, {}, nil
for i = 1, 2 do
  if not held[i] then
    tat[i] = math.max(tonumber(redis.call('HGET', KEYS[i], 'tat')) or now, now)
    allow[i] = tat[i] - (burst[i] - 1) * step[i]
    if allow[i] > now and (not last or allow[i] > allow[last]) then last = i end
  end
end
if last then
  local at = allow[last]
  if at - now > horizon then  -- no slot that far ahead: back once half the horizon passed
    at = at - horizon / 2
  else
    charge(last, tat[last] + step[last])
    hold(last, at)
  end
  for i = 1, 2 do
    if held[i] then hold(i, at) end  -- a slot taken already stays held until it is back
  end
  return math.ceil(at - now)
end
for i = 1, 2 do
  if held[i] then redis.call('ZREM', KEYS[i + 2], holder) else charge(i, tat[i] + step[i]) end
end
return 0
"""
# How long a held slot waits for its job past its time, a day: a job deferred to its slot
# goes whenever the queue picks it up; only the slot of a job that never comes back is
# dropped.
HELD_SLOT_KEEP = 86_400.0


@dataclass(frozen=True)
class SendBudget:
    """Send budgets: per account, and per (account, peer); ``horizon``: how far ahead
    (seconds) a slot may be reserved."""

    rate: float
    burst: int
    peer_rate: float
    peer_burst: int
    horizon: float = 60.0


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
        self,
        account_id: uuid.UUID,
        peer: str,
        method: str | None,
        budget: SendBudget,
        holder: str,
    ) -> tuple[float, datetime | None]:
        """One round trip before a send: (seconds to wait for the budget, flood end).

        ``holder`` (the job) keeps the slot it is told to wait for: asking again once it
        is due, it goes without contending again. With ``method``, a flood wait recorded
        for it, or a slow mode recorded for this chat, wins and nothing is taken.
        """
        account = f"tgflow:budget:{account_id}"
        chat = f"{account}:{peer}"
        keys = [account, chat, f"{account}:held", f"{chat}:held"]
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
                holder,
                int(budget.horizon * 1000),
                int(HELD_SLOT_KEEP * 1000),
            ],
        )
        text = answer.decode() if isinstance(answer, bytes) else str(answer)
        if text.startswith("-"):
            until = datetime.fromtimestamp(float(text[1:]), UTC)
            if until > datetime.now(UTC):
                return 0.0, until
            return await self.gate_send(account_id, peer, None, budget, holder)  # it just ended
        return int(text) / 1000, None
