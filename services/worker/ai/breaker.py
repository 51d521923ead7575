"""A circuit breaker per provider, shared by the cluster, and the provider's cool-down.

closed: calls pass; ``failures`` consecutive failures (server errors, timeouts,
network) open it. open: calls are refused until ``open_seconds`` have passed; then
the next caller becomes the one probe (half-open) while everyone else waits. The
probe's success closes the breaker, its failure opens it again. A 429 with
Retry-After sets a cool-down during which no worker calls the provider.

State lives in one Redis hash per provider; times are Redis server milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from redis.asyncio import Redis

from services.worker.ai import metrics
from services.worker.ai.lua import script
from shared.logs import get_logger

log = get_logger(__name__)

# Functions over a breaker hash; ``now`` comes from lua.NOW.
FUNCTIONS = """
local function breaker_read(key)
  local h = redis.call('HMGET', key, 'state', 'until', 'probe', 'cooldown')
  return h[1] or 'closed', tonumber(h[2]) or 0, h[3] or '', tonumber(h[4]) or 0
end
-- Returns a verdict (closed, probe: the caller probes, open, half_open: a probe is
-- out, cooldown) and the milliseconds to wait when refused.
local function breaker_check(key, holder, probe_ms)
  local state, untl, probe, cooldown = breaker_read(key)
  if now < cooldown then return 'cooldown', cooldown - now end
  if state == 'closed' then return 'closed', 0 end
  if state == 'open' and now < untl then return 'open', untl - now end
  if state == 'half_open' and now < untl and probe ~= holder then
    return 'half_open', untl - now
  end
  redis.call('HSET', key, 'state', 'half_open', 'until', now + probe_ms, 'probe', holder)
  return 'probe', 0
end
-- result: success, failure or neutral (says nothing of the provider's health).
local function breaker_record(key, result, holder, failures, open_ms)
  local state, untl, probe = breaker_read(key)
  local is_probe = state == 'half_open' and probe == holder
  if result == 'success' then
    if state == 'closed' or is_probe then
      redis.call('HSET', key, 'state', 'closed', 'failures', 0, 'until', 0, 'probe', '')
      return 'closed'
    end
    return state
  end
  if result == 'neutral' then
    if is_probe then redis.call('HSET', key, 'until', 0, 'probe', '') end
    return state
  end
  if is_probe then
    redis.call('HSET', key, 'state', 'open', 'until', now + open_ms, 'probe', '')
    return 'open'
  end
  if state ~= 'closed' then return state end
  if redis.call('HINCRBY', key, 'failures', 1) >= failures then
    redis.call('HSET', key, 'state', 'open', 'until', now + open_ms, 'failures', 0)
    return 'open'
  end
  return 'closed'
end
local function breaker_cool_down(key, ms)
  local ends = now + ms
  if ends > (tonumber(redis.call('HGET', key, 'cooldown')) or 0) then
    redis.call('HSET', key, 'cooldown', ends)
  end
end
"""

_CHECK = script(
    FUNCTIONS,
    """
local verdict, wait = breaker_check(KEYS[1], ARGV[1], tonumber(ARGV[2]))
return {verdict, wait}
""",
)
_RECORD = script(
    FUNCTIONS,
    "return breaker_record(KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]))",
)
_COOLDOWN = script(FUNCTIONS, "breaker_cool_down(KEYS[1], tonumber(ARGV[1]))\nreturn 0")

Verdict = Literal["closed", "probe", "open", "half_open", "cooldown"]
Result = Literal["success", "failure", "neutral"]


@dataclass(frozen=True)
class Gate:
    verdict: Verdict
    wait_seconds: float

    @property
    def allowed(self) -> bool:
        return self.verdict in ("closed", "probe")


def breaker_key(provider: str) -> str:
    return f"tgflow:ai:breaker:{provider}"


class Breaker:
    def __init__(self, redis: Redis) -> None:
        self._check = redis.register_script(_CHECK)
        self._record = redis.register_script(_RECORD)
        self._cooldown = redis.register_script(_COOLDOWN)
        self._seen: dict[str, str] = {}  # provider -> state this worker last saw

    def saw(self, provider: str, state: str) -> None:
        """Note the state this worker saw: the gauge, and a log line on each change."""
        if self._seen.get(provider, "closed") != state:
            log.warning("ai circuit breaker changed", provider=provider, state=state)
        self._seen[provider] = state
        metrics.BREAKER_STATE.labels(provider).set(metrics.BREAKER_VALUES.get(state, 0))

    async def check(self, provider: str, holder: str, probe_seconds: float) -> Gate:
        verdict, wait_ms = await self._check(
            keys=[breaker_key(provider)], args=[holder, int(probe_seconds * 1000)]
        )
        gate = Gate(str(verdict), int(wait_ms) / 1000)  # type: ignore[arg-type]
        if gate.verdict != "cooldown":
            self.saw(provider, "half_open" if gate.verdict == "probe" else gate.verdict)
        return gate

    async def record(
        self, provider: str, holder: str, result: Result, failures: int, open_seconds: float
    ) -> str:
        state = str(
            await self._record(
                keys=[breaker_key(provider)],
                args=[result, holder, failures, int(open_seconds * 1000)],
            )
        )
        self.saw(provider, state)
        return state

    async def cool_down(self, provider: str, seconds: float) -> None:
        await self._cooldown(keys=[breaker_key(provider)], args=[int(seconds * 1000)])
