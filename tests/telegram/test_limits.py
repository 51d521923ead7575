"""Send budgets and flood state in Redis."""

from __future__ import annotations

import uuid

from redis.asyncio import Redis

from services.worker.telegram.limits import Limits, SendBudget


async def test_send_budget_paces_bursts_per_account_and_peer(redis: Redis) -> None:
    limits = Limits(redis)

    async def take(account: uuid.UUID, peer: str) -> float:
        wait, flooded = await limits.gate_send(account, peer, None, budget)
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
    wait, flooded = await limits.gate_send(account, "@a", "messages.sendMessage", budget)
    assert (wait, flooded) == (0.0, until)
    # The flood took nothing: the single token is still there for another method's send.
    assert await limits.gate_send(account, "@a", "messages.forwardMessages", budget) == (0.0, None)
    wait, flooded = await limits.gate_send(account, "@a", "messages.forwardMessages", budget)
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
