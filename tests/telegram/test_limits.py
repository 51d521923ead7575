"""Send budgets and flood state in Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from services.worker.telegram.limits import HELD_SLOT_KEEP, Limits, SendBudget


def gated(
    limits: Limits, account: uuid.UUID, budget: SendBudget
) -> Callable[..., Awaitable[float]]:
    """The send gate of one account and budget, for a job and a chat (``@a`` unless
    named), with no flood recorded: the seconds it says to wait."""

    async def gate(job: str, peer: str = "@a") -> float:
        wait, flooded = await limits.gate_send(account, peer, None, budget, job)
        assert flooded is None
        return wait

    return gate


async def test_send_budget_paces_bursts_per_account_and_peer(redis: Redis) -> None:
    limits = Limits(redis)

    async def take(account: uuid.UUID, peer: str) -> float:  # each time another job
        wait, flooded = await limits.gate_send(account, peer, None, budget, str(uuid.uuid4()))
        assert flooded is None
        return wait

    account = uuid.uuid4()
    budget = SendBudget(rate=10.0, burst=5, peer_rate=1.0, peer_burst=2)
    assert await take(account, "@a") == 0
    assert await take(account, "@a") == 0
    wait = await take(account, "@a")
    assert 0.5 < wait <= 1.0  # the peer bucket is empty: one token per second
    assert await take(account, "@b") == 0  # another peer flows
    assert await take(account, "@c") == 0
    assert await take(account, "@d") == 0
    assert await take(account, "@e") > 0  # the account's burst of 5
    assert await take(uuid.uuid4(), "@a") == 0  # other accounts flow


async def test_flood_state_is_shared_and_expires(redis: Redis) -> None:
    first, second = Limits(redis), Limits(redis)  # two workers
    account = uuid.uuid4()
    until = await first.record_flood(account, "messages.sendMessage", 30)
    seen = await second.flood_until(account, "messages.sendMessage")
    assert seen is not None
    assert abs((seen - until).total_seconds()) < 0.01
    assert await second.flood_until(account, "messages.getHistory") is None
    ttl = await redis.pttl(f"tgflow:flood:{account}:messages.sendMessage")
    assert 29_000 < ttl <= 30_000


async def test_the_send_gate_answers_a_flood_without_spending_a_token(redis: Redis) -> None:
    limits = Limits(redis)
    account = uuid.uuid4()
    budget = SendBudget(rate=0.001, burst=1, peer_rate=0.001, peer_burst=1)  # one send, ever
    until = await limits.record_flood(account, "messages.sendMessage", 30)
    send = limits.gate_send(account, "@a", "messages.sendMessage", budget, "job-1")
    assert await send == (0.0, until)
    # The flood took nothing: the single token is still there for another method's send.
    forward = limits.gate_send(account, "@a", "messages.forwardMessages", budget, "job-2")
    assert await forward == (0.0, None)
    forward = limits.gate_send(account, "@a", "messages.forwardMessages", budget, "job-3")
    wait, flooded = await forward
    assert flooded is None
    assert wait > 0  # and now it is spent


async def test_a_shorter_wait_never_shortens_a_longer_one(redis: Redis) -> None:
    limits = Limits(redis)
    account = uuid.uuid4()
    long = await limits.record_flood(account, "messages.sendMessage", 600)
    assert await limits.record_flood(account, "messages.sendMessage", 5) == long
    assert await limits.flood_until(account, "messages.sendMessage") == long
    assert await redis.pttl(f"tgflow:flood:{account}:messages.sendMessage") > 590_000
    longer = await limits.record_flood(account, "messages.sendMessage", 900)
    assert longer > long


async def test_a_waiting_send_holds_its_own_slot_and_takes_it_when_due(redis: Redis) -> None:
    limits = Limits(redis)
    account = uuid.uuid4()
    budget = SendBudget(rate=100.0, burst=100, peer_rate=5.0, peer_burst=1)  # 200 ms a chat

    gate = gated(limits, account, budget)

    assert await gate("job-1") == 0
    second, third = await gate("job-2"), await gate("job-3")  # a slot each, in turn
    assert 0.15 < second <= 0.2
    assert 0.35 < third <= 0.4
    assert 0 < await gate("job-2") <= second  # asked again early: its slot, not a new one
    assert 0.55 < await gate("job-4") <= 0.6
    assert await gate("job-5", "@b") == 0  # the chat's waiting jobs hold the account back
    await asyncio.sleep(second)
    assert await gate("job-2") == 0  # due: it goes without contending again
    assert await redis.zscore(f"tgflow:budget:{account}:@a:held", "job-2") is None
    assert await redis.zscore(f"tgflow:budget:{account}:@a:held", "job-3") is not None


async def test_a_send_waiting_on_both_budgets_holds_one_then_the_other(redis: Redis) -> None:
    """Each budget is charged at its own slot: the later one is held first, the other is
    taken (or held) once the job is back, so no budget is left with a slot no send uses."""
    limits = Limits(redis)
    account = uuid.uuid4()
    budget = SendBudget(rate=5.0, burst=1, peer_rate=2.0, peer_burst=1)  # 200 ms, 500 ms

    gate = gated(limits, account, budget)

    assert await gate("job-1", "@a") == 0
    assert 0.45 < await gate("job-2", "@a") <= 0.5  # the chat's slot, the later one
    other = await gate("job-3", "@b")  # the account's next slot: not taken by job-2
    assert 0.15 < other <= 0.2
    await asyncio.sleep(other)
    assert await gate("job-3", "@b") == 0
    await asyncio.sleep(0.3)
    assert await gate("job-2", "@a") == 0  # back at its slot: the account has room


async def test_no_slot_is_held_beyond_the_horizon(redis: Redis) -> None:
    """What the budget can owe is bounded: jobs beyond the horizon hold nothing (a slot
    whose job never comes back is lost, never more than a horizon of them) and come back
    once half of it has passed."""
    limits = Limits(redis)
    account = uuid.uuid4()
    budget = SendBudget(rate=100.0, burst=100, peer_rate=1.0, peer_burst=1, horizon=2.0)

    gate = gated(limits, account, budget)

    assert await gate("job-1") == 0
    assert 0.9 < await gate("job-2") <= 1.0
    assert 1.9 < await gate("job-3") <= 2.0
    for job in ("job-4", "job-5", "job-4"):  # the next slot is 3 s ahead
        assert 1.9 < await gate(job) <= 2.0  # back when a slot is within 1 s
    held = await redis.zrange(f"tgflow:budget:{account}:@a:held", 0, -1)
    assert held == ["job-2", "job-3"]


async def test_a_send_picked_up_late_still_goes_at_its_held_slot(redis: Redis) -> None:
    """The queue may pick a deferred job up long after its slot (a busy worker): it still
    holds the slot it was charged for and goes, rather than queueing behind newer sends
    (under a backlog, each late job would be deferred again and again)."""
    limits = Limits(redis)
    account = uuid.uuid4()
    budget = SendBudget(rate=100.0, burst=100, peer_rate=5.0, peer_burst=1, horizon=1.0)

    gate = gated(limits, account, budget)

    assert await gate("job-1") == 0
    assert 0.15 < await gate("job-2") <= 0.2
    await asyncio.sleep(1.5)  # past its slot by more than the burst, a second and the horizon
    assert await gate("job-3") == 0  # a new send, with the chat's budget back
    assert await gate("job-2") == 0  # and the late one at the slot it holds
    held = f"tgflow:budget:{account}:@a:held"
    assert await redis.zcard(held) == 0
    assert 0.15 < await gate("job-4") <= 0.2  # held again: the set waits for it that long
    assert await redis.pttl(held) > HELD_SLOT_KEEP * 1000
