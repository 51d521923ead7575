"""Letting a call through to a provider: a slot, a closed breaker and budget, or a wait.

A job first waits inside the worker, up to ``slot_wait`` seconds, for a free slot of
the provider's cluster-wide semaphore (woken at once by a release in this process,
and polling for releases elsewhere) and for its request and token budgets. Past that
it is deferred: back to the queue without spending a try, so jobs over the limit
wait in the queue instead of failing. An open breaker fails the attempt (it is
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

from services.worker.ai import metrics
from services.worker.ai.breaker import Breaker, Gate, Result
from services.worker.ai.budget import Budget
from services.worker.ai.semaphore import Semaphore
from shared.errors import Deferral, JobFailure, RetryableFailure
from shared.jobs.ai import ProviderSpec
from shared.jobs.envelope import utcnow

POLL_SECONDS = 0.05  # how often a waiting job looks for slots freed by other workers
PROBE_GRACE = 5.0  # a probe's lease: the provider's total timeout plus this


@dataclass(frozen=True)
class Ticket:
    provider: ProviderSpec
    holder: str
    probe: bool


def _defer(provider: str, reason: str, seconds: float, message: str) -> Deferral:
    metrics.DEFERRED.labels(provider, reason).inc()
    return Deferral(reason, message, utcnow() + timedelta(seconds=seconds))


class Admission:
    def __init__(
        self, semaphore: Semaphore, breaker: Breaker, budget: Budget, slot_wait: float
    ) -> None:
        self.semaphore = semaphore
        self.breaker = breaker
        self.budget = budget
        self.slot_wait = slot_wait

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
            await self.semaphore.release(provider.name, holder)

    async def _enter(self, provider: ProviderSpec, holder: str, tokens: int) -> Ticket:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.slot_wait
        name = provider.name
        while True:
            if await self.semaphore.try_acquire(name, provider.concurrency, holder):
                gate = await self._gate(provider, holder)
                wait = await self.budget.take(name, provider.rpm, provider.tpm, tokens)
                if wait == 0:
                    return Ticket(provider, holder, gate.verdict == "probe")
                await self.semaphore.release(name, holder)
                if gate.verdict == "probe":  # let someone else probe meanwhile
                    await self.record(provider, holder, "neutral")
                if loop.time() + wait > deadline:
                    raise _defer(name, "ai_rate_budget", wait, f"{name} budget spent; waiting.")
                await asyncio.sleep(wait)
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise _defer(
                    name,
                    "ai_concurrency_limit",
                    random.uniform(0.1, 0.5),
                    f"All {provider.concurrency} slots of {name} are busy; waiting.",
                )
            await self.semaphore.local(name).wait(min(POLL_SECONDS, remaining))

    async def _gate(self, provider: ProviderSpec, holder: str) -> Gate:
        gate = await self.breaker.check(provider.name, holder, provider.total_timeout + PROBE_GRACE)
        if not gate.allowed:
            await self.semaphore.release(provider.name, holder)
            raise _refusal(provider.name, gate)
        return gate

    async def record(self, provider: ProviderSpec, holder: str, result: Result) -> None:
        """Tell the breaker how a call went."""
        await self.breaker.record(
            provider.name, holder, result, provider.breaker_failures, provider.breaker_open_seconds
        )


def _refusal(name: str, gate: Gate) -> JobFailure:
    jitter = random.uniform(0.05, 0.3)
    if gate.verdict == "open":
        return RetryableFailure(
            "provider_unavailable",
            f"The circuit breaker of {name} is open after repeated failures.",
            {"retry_after": gate.wait_seconds + jitter},
        )
    if gate.verdict == "half_open":
        return _defer(name, "ai_breaker_probe", min(gate.wait_seconds, 1.0) + jitter, "Probing.")
    return _defer(name, "ai_cooldown", gate.wait_seconds + jitter, f"{name} asked to slow down.")
