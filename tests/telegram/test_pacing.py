"""Pacing through the queue: flood waits per method and chat, send budgets and slow
modes, and the account's flood state."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import httpx
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from services.sandbox.admin_client import SandboxAdmin
from services.sandbox.client import auth_key_id
from services.sandbox.server import Sandbox
from services.worker.telegram.limits import Limits
from tests.helpers import auth, eventually, gateway_client, running_worker, wait_for_status
from tests.telegram.conftest import import_account
from tests.telegram.test_jobs import deferred_as, run, submit


async def test_a_flood_on_a_channel_method_holds_that_method_only(
    api: httpx.AsyncClient, admin: SandboxAdmin, redis: Redis
) -> None:
    """Telethon reads a channel with channels.getMessages: its flood is kept under that
    name, and messages.getMessages (other chats) keeps flowing."""
    account, created = await import_account(api, admin)
    owner = await admin.create_account(first_name="Owner")
    await admin.create_chat(
        title="News",
        kind="supergroup",
        creator_id=owner["user_id"],
        username="news_sb",
        members=[created["user_id"]],
        messages=[{"text": "post"}],
    )
    await admin.add_fault(
        created["user_id"], "flood_wait", method="channels.getMessages", seconds=30, times=1
    )
    held = await submit(
        api, "telegram.get_messages", account_id=account["id"], peer="@news_sb", ids=[1]
    )
    flood = f"tgflow:flood:{account['id']}:channels.getMessages"

    async def recorded() -> bool:
        return bool(await redis.exists(flood))

    await eventually(recorded, timeout=10)
    assert not await redis.exists(f"tgflow:flood:{account['id']}:messages.getMessages")
    sent = await run(api, "telegram.send_message", account_id=account["id"], peer="me", text="x")
    mine = await run(
        api,
        "telegram.get_messages",
        account_id=account["id"],
        peer="me",
        ids=[sent["result"]["message_id"]],
    )
    assert [m["text"] for m in mine["result"]["messages"]] == ["x"]
    waiting = (await api.get(f"/v1/jobs/{held}", headers=auth())).json()
    assert waiting["error"]["code"] == "flood_wait"


async def test_the_per_chat_send_budget_holds_however_the_chat_is_spelled(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    account, _ = await import_account(api, admin)
    carol = await admin.create_account(username="carol_sb", first_name="Carol")
    spellings = [
        "@carol_sb",
        "https://t.me/Carol_sb",
        str(carol["user_id"]),
        "telegram.me/carol_sb",
    ]
    finished = []
    for peer in spellings:  # one at a time: the numeric id is known once resolved
        sent = await run(
            api, "telegram.send_message", account_id=account["id"], peer=peer, text="x"
        )
        assert sent["status"] == "succeeded", sent
        finished.append(sent["finished_at"])
    # A burst of 3 per chat, then 0.34 sends a second: the fourth waits about 3 s.
    started, last = (datetime.fromisoformat(finished[i]) for i in (0, 3))
    assert (last - started).total_seconds() > 2


async def test_the_accounts_own_chat_has_one_send_budget_however_spelled(
    api: httpx.AsyncClient, admin: SandboxAdmin, redis: Redis
) -> None:
    account, created = await import_account(api, admin, username="self_sb")
    for peer in ("me", str(created["user_id"]), "@self_sb", "https://t.me/Self_sb"):
        sent = await run(
            api, "telegram.send_message", account_id=account["id"], peer=peer, text="x"
        )
        assert sent["status"] == "succeeded", sent
    buckets = await redis.keys(f"tgflow:budget:{account['id']}:*")
    assert buckets == [f"tgflow:budget:{account['id']}:{created['user_id']}"]


async def test_a_burst_to_one_chat_is_paced_one_deferral_per_waiting_send_in_order(
    sandbox: Sandbox, admin: SandboxAdmin
) -> None:
    """Each send that cannot go at once holds a slot of its own and waits once for it:
    no crowd of jobs woken together for one token, and the chat gets them in order."""
    dc = f"127.0.0.1:{sandbox.mtproto_port}"
    labels = {"type": "telegram.send_message", "code": "send_budget"}
    async with (
        gateway_client() as api,
        running_worker(
            worker_poll_delay=0.05,
            sandbox_dc=dc,
            worker_concurrency=20,
            telegram_peer_send_rate=4.0,
            telegram_peer_send_burst=2,
        ),
    ):
        account, created = await import_account(api, admin)
        me = await run(api, "telegram.get_me", account_id=account["id"])  # connected now
        assert me["status"] == "succeeded"
        before = REGISTRY.get_sample_value("tgflow_jobs_deferred_total", labels) or 0.0
        texts = [f"m{i}" for i in range(20)]
        ids = [
            await submit(api, "telegram.send_message", account_id=account["id"], peer="me", text=t)
            for t in texts
        ]
        done = [await wait_for_status(api, i, {"succeeded", "failed"}, timeout=30) for i in ids]
        deferred = (REGISTRY.get_sample_value("tgflow_jobs_deferred_total", labels) or 0) - before
    assert [(j["status"], j["attempts"]) for j in done] == [("succeeded", 1)] * 20
    assert deferred <= 20, f"{deferred} deferrals to pace 18 sends"  # one each, near enough
    finished = sorted(datetime.fromisoformat(j["finished_at"]) for j in done)
    assert (finished[-1] - finished[0]).total_seconds() > 4.0  # 18 more at 4 a second
    stored = [m["text"] for m in await admin.messages(created["user_id"])]
    assert sorted(stored[:2]) == texts[:2]  # the burst goes at once
    assert stored[2:] == texts[2:]  # then each at its slot, in the order they came


async def test_slow_mode_holds_its_chat_and_lets_the_accounts_other_chats_flow(
    api: httpx.AsyncClient, admin: SandboxAdmin, redis: Redis
) -> None:
    account, created = await import_account(api, admin)
    frank = await admin.create_account(username="frank_sb", first_name="Frank")
    await admin.add_fault(
        created["user_id"], "slowmode_wait", method="messages.sendMessage", seconds=60, times=1
    )

    async def send(peer: str, text: str) -> str:
        return await submit(
            api, "telegram.send_message", account_id=account["id"], peer=peer, text=text
        )

    slow = await send("@frank_sb", "to the slow chat")
    await deferred_as(api, slow, "slow_mode_wait")
    assert not await redis.exists(f"tgflow:flood:{account['id']}:messages.sendMessage")
    assert await redis.exists(f"tgflow:flood:{account['id']}:slowmode:{frank['user_id']}")
    elsewhere = await wait_for_status(api, await send("me", "elsewhere"), {"succeeded"}, timeout=10)
    assert elsewhere["attempts"] == 1
    again = await send("https://t.me/frank_sb", "again to the slow chat")
    await deferred_as(api, again, "flood_wait")  # deferred by the gate, no network call
    texts = [m["text"] for m in await admin.messages(created["user_id"], frank["user_id"])]
    assert texts == []


async def test_a_job_held_by_a_flood_wait_opens_no_connection(
    api: httpx.AsyncClient, admin: SandboxAdmin, redis: Redis
) -> None:
    """Deferred by the flood state alone: the client is not connected for it, also when
    the job first finds a peer the account knows (answered without Telegram)."""
    account, created = await import_account(api, admin)
    carol = await admin.create_account(username="carol_sb", first_name="Carol")
    known = await run(api, "telegram.resolve", account_id=account["id"], peer="@carol_sb")
    assert known["status"] == "succeeded"
    dropped = await api.delete(f"/v1/telegram/connections/{account['id']}", headers=auth())
    assert dropped.status_code == 202

    async def disconnected() -> bool:
        path = f"/v1/telegram/connections/{account['id']}"
        return (await api.get(path, headers=auth())).json()["connected"] is False

    await eventually(disconnected, timeout=5)
    for method in ("messages.getHistory", "messages.sendMessage"):
        await Limits(redis).record_flood(uuid.UUID(account["id"]), method, 600)
    key = auth_key_id(created["session_string"])
    before = [r for r in await admin.ledger() if r["auth_key_id"] == key]
    for job_type, params in [
        ("telegram.get_history", {"peer": "me"}),
        ("telegram.get_history", {"peer": "@carol_sb"}),
        ("telegram.get_history", {"peer": str(carol["user_id"])}),
        ("telegram.send_message", {"peer": "@carol_sb", "text": "x"}),
    ]:
        job_id = await submit(api, job_type, account_id=account["id"], **params)
        await deferred_as(api, job_id, "flood_wait")
    assert [r for r in await admin.ledger() if r["auth_key_id"] == key] == before
    # A call that needs Telegram connects the client as before.
    me = await run(api, "telegram.get_me", account_id=account["id"])
    assert me["status"] == "succeeded"
    assert len([r for r in await admin.ledger() if r["auth_key_id"] == key]) == len(before) + 1


async def test_a_short_flood_met_twice_is_waited_out_not_failed(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    account, created = await import_account(api, admin)
    await admin.post_message(created["user_id"], created["user_id"], "t")
    # Under the in-client threshold: Telethon sleeps and retries once, then meets it again.
    await admin.add_fault(
        created["user_id"], "flood_wait", method="messages.getHistory", seconds=1, times=2
    )
    read = await run(api, "telegram.get_history", account_id=account["id"], peer="me")
    assert read["status"] == "succeeded", read
    assert read["attempts"] == 1
    assert [m["text"] for m in read["result"]["messages"]] == ["t"]


async def test_a_short_flood_on_a_send_defers_it_rather_than_sleeping(
    api: httpx.AsyncClient, admin: SandboxAdmin, redis: Redis
) -> None:
    """A send is not slept through in the client (a cancel must stop it while nothing
    is on the wire): even a short flood wait defers the job, for every send of the
    account, and it sends once the wait is over."""
    account, created = await import_account(api, admin)
    method = "messages.sendMessage"
    await admin.add_fault(created["user_id"], "flood_wait", method=method, seconds=2, times=1)
    job_id = await submit(
        api, "telegram.send_message", account_id=account["id"], peer="me", text="t"
    )
    await deferred_as(api, job_id, "flood_wait")
    assert await redis.exists(f"tgflow:flood:{account['id']}:{method}")
    sent = await wait_for_status(api, job_id, {"succeeded", "failed"}, timeout=10)
    assert sent["attempts"] == 1
    assert [m["text"] for m in await admin.messages(created["user_id"])] == ["t"]


async def test_the_accounts_flood_state_follows_its_longest_running_flood(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    """A call on another method going through does not end a long flood wait still in
    force, and a longer flood met during one moves its end later."""
    account, created = await import_account(api, admin)

    async def deferred_by_flood(job_type: str, **params: Any) -> None:
        job_id = await submit(api, job_type, account_id=account["id"], **params)
        await deferred_as(api, job_id, "flood_wait")

    async def flood_left() -> tuple[str, float]:
        body = (await api.get(f"/v1/accounts/{account['id']}", headers=auth())).json()
        until = datetime.fromisoformat(body["flood_until"]) if body["flood_until"] else None
        left = (until - datetime.now(until.tzinfo)).total_seconds() if until else 0.0
        return body["state"], left

    await admin.add_fault(
        created["user_id"], "flood_wait", method="messages.sendMessage", seconds=600, times=1
    )
    await deferred_by_flood("telegram.send_message", peer="me", text="x")
    state, left = await flood_left()
    assert state == "flood_wait"
    assert 590 < left <= 600
    me = await run(api, "telegram.get_me", account_id=account["id"])
    assert me["status"] == "succeeded"
    state, left = await flood_left()
    assert state == "flood_wait"
    assert 590 < left <= 600
    await admin.add_fault(
        created["user_id"], "flood_wait", method="users.getUsers", seconds=3600, times=1
    )
    await deferred_by_flood("telegram.get_me")
    state, left = await flood_left()
    assert state == "flood_wait"
    assert 3590 < left <= 3600
