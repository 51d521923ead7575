"""Letting a call through to a provider: a slot, a closed breaker and budget, or a wait.

One Redis script takes a slot of the provider's cluster-wide semaphore, asks the
circuit breaker and spends the request and token budgets, atomically; another gives
the slot back, tells the breaker how the call went and corrects the token budget.

A job first waits inside the worker, up to ``slot_wait`` seconds, for a slot (woken at
once by a release in this process, polling for releases elsewhere) and for budget.
Past that it is deferred: back to the queue without spending a try, so jobs over the
limit wait in the queue instead of failing. An open breaker fails the attempt (it is
retried after the breaker's open time); a probe in flight or a provider cool-down
defers it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

from redis.asyncio import Redis

from services.worker.ai import breaker as breaker_
from services.worker.ai import budget as budget_
from services.worker.ai import metrics
from services.worker.ai import semaphore as semaphore_
from services.worker.ai.breaker import Breaker, Gate, Result
from services.worker.ai.lua import script
from services.worker.ai.semaphore import Semaphore
from shared.errors import Deferral, JobFailure, RetryableFailure
from shared.jobs.ai import ProviderSpec
from shared.jobs.envelope import utcnow

# How often a waiting job looks for slots freed by other workers: every POLL_SECONDS
# with up to POLLERS jobs waiting here, less often with more, so that a worker asks
# Redis about POLLERS / POLL_SECONDS times a second however many jobs wait in it.
POLL_SECONDS = 0.05
POLLERS = 4
PROBE_GRACE = 5.0  # a probe's lease: the provider's total timeout plus this

_FUNCTIONS = (semaphore_.FUNCTIONS, breaker_.FUNCTIONS, budget_.FUNCTIONS)

# KEYS: holders, breaker, request bucket, token bucket.
# ARGV: limit, lease ms, holder, probe ms, rpm, tpm, tokens.
# Returns {verdict, wait ms, holders}: verdict busy, budget, or the breaker's.
_ENTER = script(
    *_FUNCTIONS,
    """
local holder = ARGV[3]
local ok, held = sem_acquire(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), holder)
if ok == 0 then return {'busy', 0, held} end
local verdict, wait = breaker_check(KEYS[2], holder, tonumber(ARGV[4]))
if verdict ~= 'closed' and verdict ~= 'probe' then
  return {verdict, wait, sem_release(KEYS[1], holder)}
end
wait = budget_take(KEYS[3], KEYS[4], tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]))
if wait > 0 then
  if verdict == 'probe' then breaker_record(KEYS[2], 'neutral', holder, 0, 0) end
  return {'budget', wait, sem_release(KEYS[1], holder)}
end
return {verdict, 0, held}
""",
)

# KEYS: holders, breaker, token bucket.
# ARGV: holder, result, failures, open ms, cool-down ms, tpm, extra tokens.
# Returns {holders, breaker state}.
_LEAVE = script(
    *_FUNCTIONS,
    """
local held = sem_release(KEYS[1], ARGV[1])
local state = breaker_record(KEYS[2], ARGV[2], ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4]))
if tonumber(ARGV[5]) > 0 then breaker_cool_down(KEYS[2], tonumber(ARGV[5])) end
budget_adjust(KEYS[3], tonumber(ARGV[6]), tonumber(ARGV[7]))
return {held, state}
""",
)


@dataclass
class Ticket:
    """A held slot; the call sets how it went before the slot is given back."""

    provider: ProviderSpec
    holder: str
    probe: bool
    reserved_tokens: int
    result: Result = "neutral"
    cool_down: float = 0.0
    used_tokens: int | None = None


def _defer(provider: str, reason: str, seconds: float, message: str) -> Deferral:
    metrics.DEFERRED.labels(provider, reason).inc()
    return Deferral(reason, message, utcnow() + timedelta(seconds=seconds))


class Admission:
    def __init__(self, redis: Redis, lease_seconds: float, slot_wait: float) -> None:
        self.semaphore = Semaphore(redis, lease_seconds)
        self.breaker = Breaker(redis)
        self.slot_wait = slot_wait
        self._enter_script = redis.register_script(_ENTER)
        self._leave_script = redis.register_script(_LEAVE)

    @asynccontextmanager
    async def admit(
        self, provider: ProviderSpec, holder: str, tokens: int
    ) -> AsyncIterator[Ticket]:
        """Hold a slot of ``provider`` for the block, its lease renewed meanwhile."""
        ticket = await self._enter(provider, holder, tokens)
        renewer = asyncio.create_task(self.semaphore.keep_renewed(provider.name, holder))
        try:
            yield ticket
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
            await self._leave(ticket)

    async def _enter(self, provider: ProviderSpec, holder: str, tokens: int) -> Ticket:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.slot_wait
        name = provider.name
        while True:
            verdict, wait_ms, held = await self._enter_script(
                keys=[
                    semaphore_.holders_key(name),
                    breaker_.breaker_key(name),
                    *budget_.keys(name),
                ],
                args=[
                    provider.concurrency,
                    self.semaphore.lease_ms,
                    holder,
                    int((provider.total_timeout + PROBE_GRACE) * 1000),
                    provider.rpm or 0,
                    provider.tpm or 0,
                    tokens,
                ],
            )
            metrics.SEMAPHORE_IN_USE.labels(name).set(int(held))
            wait = int(wait_ms) / 1000
            if verdict in ("closed", "probe"):
                self.breaker.saw(name, "closed" if verdict == "closed" else "half_open")
                return Ticket(provider, holder, verdict == "probe", tokens)
            if verdict not in ("busy", "budget"):
                raise self._refusal(name, Gate(verdict, wait))
            remaining = deadline - loop.time()
            if verdict == "budget" and wait <= remaining:
                await asyncio.sleep(wait)
            elif verdict == "budget":
                raise _defer(name, "ai_rate_budget", wait, f"{name} budget spent; waiting.")
            elif remaining > 0:
                waiters = self.semaphore.local(name)
                poll = POLL_SECONDS * max(1.0, (len(waiters) + 1) / POLLERS)
                await waiters.wait(min(poll, remaining))
            else:
                raise _defer(
                    name,
                    "ai_concurrency_limit",
                    random.uniform(0.1, 0.5),
                    f"All {provider.concurrency} slots of {name} are busy; waiting.",
                )

    async def _leave(self, ticket: Ticket) -> None:
        provider = ticket.provider
        name = provider.name
        extra = 0 if ticket.used_tokens is None else ticket.used_tokens - ticket.reserved_tokens
        held, state = await self._leave_script(
            keys=[semaphore_.holders_key(name), breaker_.breaker_key(name), budget_.keys(name)[1]],
            args=[
                ticket.holder,
                ticket.result,
                provider.breaker_failures,
                int(provider.breaker_open_seconds * 1000),
                int(ticket.cool_down * 1000),
                provider.tpm or 0,
                extra,
            ],
        )
        metrics.SEMAPHORE_IN_USE.labels(name).set(int(held))
        self.breaker.saw(name, str(state))
        self.semaphore.local(name).wake_one()

    def _refusal(self, name: str, gate: Gate) -> JobFailure:
        if gate.verdict in ("open", "half_open"):
            self.breaker.saw(name, gate.verdict)
        jitter = random.uniform(0.05, 0.3)
        if gate.verdict == "open":
            return RetryableFailure(
                "provider_unavailable",
                f"The circuit breaker of {name} is open after repeated failures.",
                {"retry_after": gate.wait_seconds + jitter},
            )
        if gate.verdict == "half_open":
            return _defer(
                name, "ai_breaker_probe", min(gate.wait_seconds, 1.0) + jitter, "Probing."
            )
        return _defer(
            name, "ai_cooldown", gate.wait_seconds + jitter, f"{name} asked to slow down."
        )
