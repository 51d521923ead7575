"""Requests-per-minute and tokens-per-minute budgets per provider, cluster-wide.

Each budget is a token bucket in a Redis hash (level, last refill in ms of Redis
server time) that refills at its per-minute rate up to one minute's worth. A call
takes one request and its estimated tokens from both buckets atomically, or takes
nothing and learns how long to wait. After the call the token bucket is corrected
by the difference between the real and the estimated usage.
"""

from __future__ import annotations

from redis.asyncio import Redis

_LEVEL = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function level(key, cap)
  local v = redis.call('HMGET', key, 'level', 'ts')
  local lvl = tonumber(v[1]) or cap
  local ts = tonumber(v[2]) or now
  return math.min(cap, lvl + (now - ts) * cap / 60000)
end
local function store(key, lvl)
  redis.call('HSET', key, 'level', tostring(lvl), 'ts', now)
  redis.call('PEXPIRE', key, 120000)
end
"""

# KEYS: requests bucket, tokens bucket. ARGV: rpm (0: none), tpm (0: none), tokens.
# Returns 0 when taken, else the milliseconds until both buckets would allow it.
_TAKE = (
    _LEVEL
    + """
local rpm, tpm, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local wait, r, k = 0, 0, 0
if rpm > 0 then
  r = level(KEYS[1], rpm)
  if r < 1 then wait = math.max(wait, (1 - r) * 60000 / rpm) end
end
if tpm > 0 then
  k = level(KEYS[2], tpm)
  local need = math.min(cost, tpm)
  if k < need then wait = math.max(wait, (need - k) * 60000 / tpm) end
end
if wait > 0 then return math.ceil(wait) end
if rpm > 0 then store(KEYS[1], r - 1) end
if tpm > 0 then store(KEYS[2], k - cost) end
return 0
"""
)

# KEYS: tokens bucket. ARGV: tpm, tokens to take (negative: give back).
_ADJUST = (
    _LEVEL
    + """
local tpm = tonumber(ARGV[1])
store(KEYS[1], level(KEYS[1], tpm) - tonumber(ARGV[2]))
return 0
"""
)


def _keys(provider: str) -> list[str]:
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
        wait_ms = await self._take(keys=_keys(provider), args=[rpm or 0, tpm or 0, tokens])
        return int(wait_ms) / 1000

    async def correct(self, provider: str, tpm: int | None, extra_tokens: int) -> None:
        """Charge tokens beyond the estimate (or refund unused ones, if negative)."""
        if tpm and extra_tokens:
            await self._adjust(keys=_keys(provider)[1:], args=[tpm, extra_tokens])
