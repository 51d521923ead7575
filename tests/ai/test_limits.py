"""The Redis-side limiters on their own: semaphore leases, budgets, breaker states."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.worker.ai.admission import Admission
from services.worker.ai.breaker import Breaker
from services.worker.ai.budget import Budget
from services.worker.ai.semaphore import Semaphore, holders_key
from shared.errors import Deferral, RetryableFailure
from shared.jobs.ai import ProviderSpec
from tests.helpers import eventually


async def test_semaphore_holds_at_its_limit_and_reclaims_expired_leases(redis: Any) -> None:
    sem = Semaphore(redis, lease_seconds=0.3)
    assert [await sem.try_acquire("p", 3, f"h{i}") for i in range(4)] == [True] * 3 + [False]
    assert await sem.try_acquire("p", 3, "h1")  # a holder asking again keeps its slot
    await sem.release("p", "h0")
    assert await sem.try_acquire("p", 3, "h3")
    assert not await sem.try_acquire("p", 3, "h4")
    # Nobody renews: every lease lapses and the slots come back.
    await eventually(lambda: sem.try_acquire("p", 3, "h4"), timeout=2)
    assert not await sem.renew("p", "h1")  # h1's lease lapsed and was dropped
    assert await redis.zcard(holders_key("p")) == 1


async def test_a_renewed_lease_outlives_its_length(redis: Any) -> None:
    sem = Semaphore(redis, lease_seconds=0.3)
    assert await sem.try_acquire("p", 1, "long")
    renewing = asyncio.create_task(sem.keep_renewed("p", "long"))
    await asyncio.sleep(0.8)
    assert not await sem.try_acquire("p", 1, "other")
    renewing.cancel()
    await asyncio.gather(renewing, return_exceptions=True)


async def test_budget_spends_requests_and_tokens_then_asks_to_wait(redis: Any) -> None:
    budget = Budget(redis)
    assert await budget.take("p", None, None, 10**9) == 0  # no budgets configured
    assert [await budget.take("p", 2, None, 1) for _ in range(3)][:2] == [0, 0]
    wait = await budget.take("p", 2, None, 1)
    assert 0 < wait <= 30  # one request comes back every 30 s at 2 per minute
    assert await budget.take("q", None, 1000, 600) == 0
    wait = await budget.take("q", None, 1000, 600)
    assert 10 < wait <= 12.5  # 200 more tokens needed at 1000 per minute
    await budget.correct("q", 1000, -400)  # the first call used 400 fewer than estimated
    assert await budget.take("q", None, 1000, 600) == 0


async def test_a_call_bigger_than_the_budget_runs_on_a_full_bucket(redis: Any) -> None:
    budget = Budget(redis)
    assert await budget.take("p", None, 100, 5000) == 0  # full bucket: allowed, overdrawn
    assert await budget.take("p", None, 100, 1) > 60  # and the debt is paid over time


async def test_breaker_cycle(redis: Any) -> None:
    breaker = Breaker(redis)

    async def failure(holder: str = "a") -> str:
        return await breaker.record("p", holder, "failure", 2, 0.3)

    assert (await breaker.check("p", "a", 5)).verdict == "closed"
    assert await failure() == "closed"
    assert await breaker.record("p", "a", "success", 2, 0.3) == "closed"  # resets the count
    assert await failure() == "closed"
    assert await failure() == "open"
    gate = await breaker.check("p", "a", 5)
    assert gate.verdict == "open"
    assert 0 < gate.wait_seconds <= 0.3
    await asyncio.sleep(0.35)
    assert (await breaker.check("p", "prober", 5)).verdict == "probe"
    assert (await breaker.check("p", "other", 5)).verdict == "half_open"
    assert await failure("prober") == "open"  # the probe failed: open again
    await asyncio.sleep(0.35)
    assert (await breaker.check("p", "prober2", 5)).verdict == "probe"
    assert await breaker.record("p", "other", "success", 2, 0.3) == "half_open"  # not the probe
    assert await breaker.record("p", "prober2", "success", 2, 0.3) == "closed"
    assert (await breaker.check("p", "anyone", 5)).verdict == "closed"


async def test_cooldown_holds_every_caller(redis: Any) -> None:
    breaker = Breaker(redis)
    await breaker.cool_down("p", 0.3)
    gate = await breaker.check("p", "a", 5)
    assert gate.verdict == "cooldown"
    assert not gate.allowed
    await breaker.cool_down("p", 0.01)  # a shorter cool-down does not cut the longer one
    assert (await breaker.check("p", "a", 5)).verdict == "cooldown"
    await asyncio.sleep(0.35)
    assert (await breaker.check("p", "a", 5)).allowed


def _provider(**fields: Any) -> ProviderSpec:
    return ProviderSpec(name="p", base_url="http://127.0.0.1:1/v1", default_model="m", **fields)


async def test_admission_waits_for_a_local_release_then_defers(redis: Any) -> None:
    admission = Admission(redis, 5, slot_wait=1.0)
    provider = _provider(concurrency=1)
    async with admission.admit(provider, "first", 1):
        waiting = asyncio.create_task(_admit_once(admission, provider, "second"))
        await asyncio.sleep(0.1)
        assert not waiting.done()
    assert await asyncio.wait_for(waiting, 0.5) == "second"  # woken by the release
    async with admission.admit(provider, "third", 1):
        quick = Admission(redis, 5, slot_wait=0.1)
        with pytest.raises(Deferral) as deferred:
            await _admit_once(quick, provider, "fourth")
    assert deferred.value.code == "ai_concurrency_limit"


async def test_admission_refuses_while_the_breaker_is_open(redis: Any) -> None:
    admission = Admission(redis, 5, slot_wait=1.0)
    provider = _provider(breaker_failures=1, breaker_open_seconds=5)
    await admission.breaker.record("p", "x", "failure", 1, 5)
    with pytest.raises(RetryableFailure) as refused:
        await _admit_once(admission, provider, "y")
    assert refused.value.code == "provider_unavailable"
    assert 4 < (refused.value.details or {})["retry_after"] < 6
    assert await redis.zcard(holders_key("p")) == 0  # the slot was given back


async def _admit_once(
    admission: Admission, provider: ProviderSpec, holder: str, tokens: int = 1
) -> str:
    async with admission.admit(provider, holder, tokens) as ticket:
        return ticket.holder


async def test_admission_waits_for_budget_or_defers(redis: Any) -> None:
    provider = _provider(tpm=6000)  # refills 100 tokens a second
    patient = Admission(redis, 5, slot_wait=2.0)
    assert await _admit_once(patient, provider, "big", tokens=5950) == "big"
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await _admit_once(patient, provider, "next", tokens=100) == "next"
    assert 0.3 < loop.time() - start < 1.5  # waited for ~50 tokens of refill
    hasty = Admission(redis, 5, slot_wait=0.1)
    with pytest.raises(Deferral) as deferred:
        await _admit_once(hasty, provider, "later", tokens=3000)
    assert deferred.value.code == "ai_rate_budget"
    assert await redis.zcard(holders_key("p")) == 0  # no slot kept while deferred
