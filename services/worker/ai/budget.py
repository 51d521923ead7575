"""Requests-per-minute and tokens-per-minute budgets per provider, cluster-wide.

Each budget is a token bucket in a Redis hash (level, last refill in ms of Redis
server time) that refills at its per-minute rate up to one minute's worth. A call
takes one request and its estimated tokens from both buckets atomically, or takes
nothing and learns how long to wait. After the call the token bucket is corrected
by the difference between the real and the estimated usage.
"""

from __future__ import annotations

from redis.asyncio import Redis

from services.worker.ai.lua import script

# Functions over token buckets; ``now`` comes from lua.NOW.
FUNCTIONS = """
local function bucket_level(key, cap)
  local v = redis.call('HMGET', key, 'level', 'ts')
  local lvl = tonumber(v[1]) or cap
  local ts = tonumber(v[2]) or now
  return math.min(cap, lvl + (now - ts) * cap / 60000)
end
local function bucket_store(key, lvl)
  redis.call('HSET', key, 'level', tostring(lvl), 'ts', now)
  redis.call('PEXPIRE', key, 120000)
end
-- Take one request and ``cost`` tokens (limits of 0 are off); 0, or ms to wait.
local function budget_take(rkey, tkey, rpm, tpm, cost)
  local wait, r, k = 0, 0, 0
  if rpm > 0 then
    r = bucket_level(rkey, rpm)
    if r < 1 then wait = math.max(wait, (1 - r) * 60000 / rpm) end
  end
  if tpm > 0 then
    k = bucket_level(tkey, tpm)
    local need = math.min(cost, tpm)
    if k < need then wait = math.max(wait, (need - k) * 60000 / tpm) end
  end
  if wait > 0 then return math.ceil(wait) end
  if rpm > 0 then bucket_store(rkey, r - 1) end
  if tpm > 0 then bucket_store(tkey, k - cost) end
  return 0
end
local function budget_adjust(tkey, tpm, tokens)
  if tpm > 0 and tokens ~= 0 then bucket_store(tkey, bucket_level(tkey, tpm) - tokens) end
end
"""

# KEYS: requests bucket, tokens bucket. ARGV: rpm (0: none), tpm (0: none), tokens.
_TAKE = script(
    FUNCTIONS,
    """
return budget_take(KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
""",
)

# KEYS: tokens bucket. ARGV: tpm, tokens to take (negative: give back).
_ADJUST = script(
    FUNCTIONS, "budget_adjust(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))\nreturn 0"
)


def keys(provider: str) -> list[str]:
    """The request and token buckets of a provider."""
    return [f"tgflow:ai:rpm:{provider}", f"tgflow:ai:tpm:{provider}"]


class Budget:
    """Per-minute request and token budgets shared by every worker."""

    def __init__(self, redis: Redis) -> None:
        self._take = redis.register_script(_TAKE)
        self._adjust = redis.register_script(_ADJUST)

    async def take(self, provider: str, rpm: int | None, tpm: int | None, tokens: int) -> float:
        """Spend one request and ``tokens``; 0.0 if done, else seconds to wait first."""
        if not rpm and not tpm:
            return 0.0
        wait_ms = await self._take(keys=keys(provider), args=[rpm or 0, tpm or 0, tokens])
        return int(wait_ms) / 1000

    async def correct(self, provider: str, tpm: int | None, extra_tokens: int) -> None:
        """Charge tokens beyond the estimate (or refund unused ones, if negative)."""
        if tpm and extra_tokens:
            await self._adjust(keys=keys(provider)[1:], args=[tpm, extra_tokens])
