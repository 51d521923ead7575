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
from shared.logs import get_logger

log = get_logger(__name__)

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'state', 'until', 'probe', 'cooldown')
local state, untl, probe = h[1] or 'closed', tonumber(h[2]) or 0, h[3] or ''
local cooldown = tonumber(h[4]) or 0
"""

# ARGV: holder, probe lease ms. Returns {verdict, wait ms}; verdict is one of
# closed, probe (this caller probes), open, half_open (a probe is out), cooldown.
_CHECK = (
    _NOW
    + """
if now < cooldown then return {'cooldown', cooldown - now} end
if state == 'closed' then return {'closed', 0} end
if state == 'open' and now < untl then return {'open', untl - now} end
if state == 'half_open' and now < untl and probe ~= ARGV[1] then
  return {'half_open', untl - now}
end
redis.call('HSET', KEYS[1], 'state', 'half_open', 'until', now + tonumber(ARGV[2]),
           'probe', ARGV[1])
return {'probe', 0}
"""
)

# ARGV: result (success, failure, neutral), holder, failures to open, open ms.
# Returns the state after recording.
_RECORD = (
    _NOW
    + """
local result, holder = ARGV[1], ARGV[2]
local is_probe = state == 'half_open' and probe == holder
if result == 'success' then
  if state == 'closed' or is_probe then
    redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0, 'until', 0, 'probe', '')
    return 'closed'
  end
  return state
end
if result == 'neutral' then
  if is_probe then redis.call('HSET', KEYS[1], 'until', 0, 'probe', '') end
  return state
end
if is_probe then
  redis.call('HSET', KEYS[1], 'state', 'open', 'until', now + tonumber(ARGV[4]), 'probe', '')
  return 'open'
end
if state ~= 'closed' then return state end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if failures >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'until', now + tonumber(ARGV[4]), 'failures', 0)
  return 'open'
end
return 'closed'
"""
)

# ARGV: cool-down ms from now. Keeps the later of the old and the new end.
_COOLDOWN = (
    _NOW
    + """
local ends = now + tonumber(ARGV[1])
if ends > cooldown then redis.call('HSET', KEYS[1], 'cooldown', ends) end
return 0
"""
)

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

    def _saw(self, provider: str, state: str) -> None:
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
            self._saw(provider, "half_open" if gate.verdict == "probe" else gate.verdict)
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
        self._saw(provider, state)
        return state

    async def cool_down(self, provider: str, seconds: float) -> None:
        await self._cooldown(keys=[breaker_key(provider)], args=[int(seconds * 1000)])
