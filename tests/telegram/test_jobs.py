"""Telegram jobs through the real Telethon client against the sandbox DC."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis
from telethon.tl import types

from services.sandbox.admin_client import SandboxAdmin
from services.sandbox.server import Sandbox
from services.worker.tasks import telegram as telegram_tasks
from services.worker.telegram.runtime import message_out
from tests.helpers import auth, eventually, gateway_client, running_worker, wait_for_status
from tests.telegram.conftest import import_account


async def submit(api: httpx.AsyncClient, job_type: str, **params: Any) -> str:
    response = await api.post("/v1/jobs", json={"type": job_type, "params": params}, headers=auth())
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


async def run(api: httpx.AsyncClient, job_type: str, **params: Any) -> dict[str, Any]:
    """Submit a job and wait for it to succeed or fail."""
    job_id = await submit(api, job_type, **params)
    return await wait_for_status(api, job_id, {"succeeded", "failed"}, timeout=15)


async def deferred_as(api: httpx.AsyncClient, job_id: str, code: str) -> dict[str, Any]:
    """The job once it waits (deferred, or retried) with error ``code``."""

    async def waiting() -> dict[str, Any] | None:
        job: dict[str, Any] = (await api.get(f"/v1/jobs/{job_id}", headers=auth())).json()
        return job if job["error"] and job["error"]["code"] == code else None

    found: dict[str, Any] = await eventually(waiting, timeout=10)
    return found


async def test_get_me_send_and_read_back(api: httpx.AsyncClient, admin: SandboxAdmin) -> None:
    account, created = await import_account(api, admin, username="bob_sb", first_name="Bob")
    me = await run(api, "telegram.get_me", account_id=account["id"])
    assert me["status"] == "succeeded"
    assert me["result"]["id"] == created["user_id"]
    assert me["result"]["username"] == "bob_sb"
    sent = await run(
        api, "telegram.send_message", account_id=account["id"], peer="me", text="hello from tgflow"
    )
    assert sent["status"] == "succeeded", sent
    stored = await admin.messages(created["user_id"])
    assert [(m["id"], m["text"]) for m in stored] == [
        (sent["result"]["message_id"], "hello from tgflow")
    ]
    assert stored[0]["random_id"] == sent["result"]["random_id"]
    history = await run(api, "telegram.get_history", account_id=account["id"], peer="me", limit=10)
    assert [m["text"] for m in history["result"]["messages"]] == ["hello from tgflow"]


async def test_resolve_a_username(api: httpx.AsyncClient, admin: SandboxAdmin) -> None:
    account, _ = await import_account(api, admin)
    target = await admin.create_account(username="carol_sb", first_name="Carol")
    resolved = await run(api, "telegram.resolve", account_id=account["id"], peer="@carol_sb")
    assert resolved["result"]["peer"] == {
        "id": target["user_id"],
        "kind": "user",
        "username": "carol_sb",
        "title": "Carol",
    }
    missing = await run(api, "telegram.resolve", account_id=account["id"], peer="@nobody_here")
    assert missing["status"] == "failed"
    assert missing["error"]["code"] == "username_not_occupied"


async def test_send_is_exactly_once_when_the_connection_drops_after_executing(
    api: httpx.AsyncClient, admin: SandboxAdmin, pg: asyncpg.Connection[Any]
) -> None:
    account, created = await import_account(api, admin)
    await admin.add_fault(created["user_id"], "drop_after", method="messages.sendMessage", times=1)
    sent = await run(
        api, "telegram.send_message", account_id=account["id"], peer="me", text="only once"
    )
    assert sent["status"] == "succeeded", sent
    stored = await admin.messages(created["user_id"])
    assert [m["text"] for m in stored] == ["only once"]
    assert stored[0]["id"] == sent["result"]["message_id"]
    row = await eventually(
        lambda: pg.fetchrow(
            "SELECT random_id FROM jobs WHERE id = $1 AND status = 'succeeded'",
            uuid.UUID(sent["id"]),
        )
    )
    assert row["random_id"] == sent["result"]["random_id"]


# The MTProto method each job type under test sends its messages with.
SENDS = {
    "telegram.send_message": "messages.sendMessage",
    "telegram.forward_messages": "messages.forwardMessages",
}


async def refused_resend(
    api: httpx.AsyncClient,
    admin: SandboxAdmin,
    account: dict[str, Any],
    job_type: str = "telegram.send_message",
    **params: Any,
) -> dict[str, Any]:
    """A send (or forward) whose answer is lost once, and whose resend the DC refuses
    as a repeated random_id (as Telegram may, rather than answering with the original)."""
    await admin.set_random_id_duplicate(True)
    user_id = account["tg_user_id"]
    await admin.add_fault(user_id, "drop_after", method=SENDS[job_type], times=1)
    sent = await run(api, job_type, account_id=account["id"], **params)
    assert sent["status"] == "succeeded", sent  # the message exists: delivered once
    assert sent["result"]["resend_refused"] is True
    return sent


async def test_a_refused_resend_reports_the_message_the_first_attempt_sent(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    account, created = await import_account(api, admin)
    friend = await admin.create_account(username="friend_sb")
    await admin.post_message(friend["user_id"], created["user_id"], "only once")  # theirs
    sent = await refused_resend(api, admin, account, peer="@friend_sb", text="only once")
    stored = await admin.messages(created["user_id"], friend["user_id"])
    ours = [m for m in stored if m["out"]]
    assert [(m["id"], m["random_id"]) for m in ours] == [
        (sent["result"]["message_id"], sent["result"]["random_id"])
    ]
    assert len(stored) == 2


async def test_a_refused_resend_names_no_message_it_cannot_tell_apart(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    account, created = await import_account(api, admin)
    await admin.post_message(created["user_id"], created["user_id"], "same words")  # earlier
    sent = await refused_resend(api, admin, account, peer="me", text="same words")
    assert sent["result"]["message_id"] is None  # two candidates: neither is named
    stored = await admin.messages(created["user_id"])
    assert [m["random_id"] for m in stored] == [None, sent["result"]["random_id"]]


async def test_a_forward_whose_resend_is_refused_succeeds_once(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    account, created = await import_account(api, admin)
    original = await admin.post_message(created["user_id"], created["user_id"], "pass it on")
    forwarded = await refused_resend(
        api,
        admin,
        account,
        "telegram.forward_messages",
        from_peer="me",
        to_peer="me",
        ids=[original["id"]],
    )
    assert forwarded["result"]["message_ids"] == []  # a forward's copies are not named
    assert len(await admin.messages(created["user_id"])) == 2  # the original, one copy


async def test_a_refused_resend_whose_message_is_out_of_reach_succeeds_without_sending(
    sandbox: Sandbox, admin: SandboxAdmin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(telegram_tasks, "SENT_SCAN", 2)
    dc = f"127.0.0.1:{sandbox.mtproto_port}"
    async with (
        gateway_client() as api,
        running_worker(worker_poll_delay=0.05, sandbox_dc=dc, telegram_request_timeout=1),
    ):
        account, created = await import_account(api, admin)
        friend = await admin.create_account(username="friend_sb")
        await admin.set_random_id_duplicate(True)
        # The DC stores the message and holds the answer past the request's timeout
        # (a retry comes at once: no 2 s sleep after the server's error either).
        await admin.add_fault(
            created["user_id"], "delay_after", method="messages.sendMessage", seconds=3
        )
        job_id = await submit(
            api,
            "telegram.send_message",
            account_id=account["id"],
            peer="@friend_sb",
            text="lost in the chat",
        )

        async def stored() -> Any:
            return await admin.messages(created["user_id"], friend["user_id"])

        await eventually(stored)
        for text in ("one", "two"):  # newer than ours: the scan of 2 misses it
            await admin.post_message(friend["user_id"], created["user_id"], text)
        job = await wait_for_status(api, job_id, {"succeeded", "failed"}, timeout=20)
    assert job["status"] == "succeeded", job
    assert job["result"]["resend_refused"] is True
    assert job["result"]["message_id"] is None
    texts = [m["text"] for m in await admin.messages(created["user_id"], friend["user_id"])]
    assert sorted(texts) == ["lost in the chat", "one", "two"]


async def test_flood_wait_defers_and_is_shared(
    api: httpx.AsyncClient, admin: SandboxAdmin, redis: Redis
) -> None:
    account, created = await import_account(api, admin)
    # Longer than the in-client sleep threshold (3 s), so the queue does the waiting.
    await admin.add_fault(
        created["user_id"], "flood_wait", method="messages.sendMessage", seconds=4, times=1
    )
    job_id = await submit(
        api, "telegram.send_message", account_id=account["id"], peer="me", text="after the wait"
    )
    waiting = await deferred_as(api, job_id, "flood_wait")
    assert waiting["status"] in ("queued", "running")
    assert await redis.exists(f"tgflow:flood:{account['id']}:messages.sendMessage")
    done = await wait_for_status(api, job_id, {"succeeded", "failed"}, timeout=15)
    assert done["status"] == "succeeded"
    assert done["attempts"] == 1  # the wait spent no try
    assert [m["text"] for m in await admin.messages(created["user_id"])] == ["after the wait"]

    async def counted() -> Any:  # calls are counted by outcome, a wait as a wait
        body = (await api.get("/v1/telegram/stats", headers=auth())).json()
        sends = body["requests_by_method"].get("messages.sendMessage", {})
        return body if sends.get("ok") else None

    stats = await eventually(counted, timeout=5)
    assert stats["requests_by_method"]["messages.sendMessage"] == {"flood_wait": 1, "ok": 1}
    assert stats["flood_waits"] == 1


@pytest.mark.parametrize(
    ("job_type", "params"),
    [("telegram.get_me", {}), ("telegram.resolve", {"peer": "me"})],  # both ask users.getUsers
)
async def test_revoked_session_disables_the_account(
    api: httpx.AsyncClient,
    admin: SandboxAdmin,
    pg: asyncpg.Connection[Any],
    job_type: str,
    params: dict[str, Any],
) -> None:
    account, created = await import_account(api, admin)
    await admin.add_fault(created["user_id"], "revoke")
    failed = await run(api, job_type, account_id=account["id"], **params)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "auth_key_unregistered"
    state = (await api.get(f"/v1/accounts/{account['id']}", headers=auth())).json()
    assert state["state"] == "disabled"
    assert state["disabled_reason"] == "revoked"
    refused = await api.post(
        "/v1/jobs",
        json={"type": "telegram.get_me", "params": {"account_id": account["id"]}},
        headers=auth(),
    )
    assert refused.status_code == 409
    assert refused.json()["error"]["details"]["state"] == "disabled"
    kinds = [
        r["kind"]
        for r in await pg.fetch(
            "SELECT kind FROM account_events WHERE account_id = $1 ORDER BY id",
            uuid.UUID(account["id"]),
        )
    ]
    # The client's disconnect event is written in the background: not waited for here.
    assert [k for k in kinds if k != "disconnect"] == [
        "imported",
        "connect",
        "state_change",
        "error",
    ]


async def test_invalid_peer_is_422_before_any_worker(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/v1/jobs",
        json={
            "type": "telegram.send_message",
            "params": {"account_id": str(uuid.uuid4()), "peer": "not a peer!", "text": "x"},
        },
        headers=auth(),
    )
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "params.peer"


async def test_channel_join_read_members_and_forward_once(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    account, me = await import_account(api, admin)
    owner = await admin.create_account(username="owner_sb", first_name="Owner")
    members = [(await admin.create_account(first_name=f"M{i}"))["user_id"] for i in range(5)]
    invited = list(members)
    chat = await admin.create_chat(
        title="News",
        kind="supergroup",
        creator_id=owner["user_id"],
        username="news_sb",
        invite_hash="joinme123",
        members=members,
        messages=[{"text": f"post {i}"} for i in range(3)],
    )
    joined = await run(api, "telegram.join_chat", account_id=account["id"], target="@news_sb")
    assert joined["status"] == "succeeded", joined
    assert joined["result"]["peer"]["id"] == chat["chat_id"]
    history = await run(
        api, "telegram.get_history", account_id=account["id"], peer="@news_sb", limit=10
    )
    posts = history["result"]["messages"]
    # The chat's first message is the service message of its creation: shown, textless,
    # so that a page is as long as Telegram's and paging by offset_id reaches it.
    assert [(m["text"], m["action"]) for m in posts] == [
        ("post 2", None),
        ("post 1", None),
        ("post 0", None),
        ("", "channel_create"),
    ]
    posts = posts[:3]
    last = await run(
        api,
        "telegram.get_history",
        account_id=account["id"],
        peer="@news_sb",
        limit=1,
        offset_id=posts[-1]["id"],
    )
    assert [(m["id"], m["action"]) for m in last["result"]["messages"]] == [(1, "channel_create")]
    service = await run(
        api, "telegram.get_messages", account_id=account["id"], peer="@news_sb", ids=[1]
    )
    assert service["result"]["messages"] == last["result"]["messages"]
    by_id = await run(
        api,
        "telegram.get_messages",
        account_id=account["id"],
        peer="@news_sb",
        ids=[posts[-1]["id"]],
    )
    assert [m["text"] for m in by_id["result"]["messages"]] == ["post 0"]
    page = await run(
        api, "telegram.get_participants", account_id=account["id"], peer="@news_sb", limit=3
    )
    assert len(page["result"]["participants"]) == 3
    assert page["result"]["total"] >= 5
    assert page["result"]["next_offset"] == 3
    assert page["progress"] == {"pages": 1, "fetched": 3, "total": page["result"]["total"]}
    paged = await run(
        api,
        "telegram.get_participants",
        account_id=account["id"],
        peer="@news_sb",
        limit=4,
        page_size=2,
        offset=1,
    )  # two requests of two, each reported as it lands
    members = [u["id"] for u in paged["result"]["participants"]]
    assert len(set(members)) == 4
    assert members[:2] == [u["id"] for u in page["result"]["participants"]][1:]
    assert paged["progress"] == {"pages": 2, "fetched": 4, "total": page["result"]["total"]}
    assert paged["result"]["next_offset"] == (5 if page["result"]["total"] > 5 else None)
    # A page's users also hold whoever its entries mention (this account's own entry
    # names its inviter, the owner): every member once, none but members.
    everyone = await run(
        api,
        "telegram.get_participants",
        account_id=account["id"],
        peer="@news_sb",
        limit=100,
        page_size=2,
    )
    walked = [u["id"] for u in everyone["result"]["participants"]]
    assert sorted(walked) == sorted([owner["user_id"], *invited, me["user_id"]])
    assert everyone["result"]["total"] == 7
    user = await run(api, "telegram.get_participants", account_id=account["id"], peer="@owner_sb")
    assert user["error"]["code"] == "peer_not_a_channel"  # a user's @username
    dialogs = await run(api, "telegram.get_dialogs", account_id=account["id"])
    assert chat["chat_id"] in [d["peer"]["id"] for d in dialogs["result"]["dialogs"]]
    read = await run(api, "telegram.mark_read", account_id=account["id"], peer="@news_sb")
    assert read["status"] == "succeeded", read
    forwarded = await run(
        api,
        "telegram.forward_messages",
        account_id=account["id"],
        from_peer="@news_sb",
        to_peer="me",
        ids=[posts[0]["id"], posts[1]["id"]],
    )
    assert forwarded["status"] == "succeeded", forwarded
    saved = await admin.messages(me["user_id"], peer=me["user_id"])
    assert sorted(m["id"] for m in saved) == sorted(forwarded["result"]["message_ids"])
    assert len(saved) == 2


async def test_joining_a_chat_the_account_is_in_already_succeeds_with_the_chat(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    account, me = await import_account(api, admin)
    owner = await admin.create_account(first_name="Owner")
    chat = await admin.create_chat(
        title="Private", kind="channel", creator_id=owner["user_id"], invite_hash="privhash1"
    )
    expected = {"id": chat["chat_id"], "kind": "channel", "username": None, "title": "Private"}
    await run(api, "telegram.get_me", account_id=account["id"])  # connected
    # The join executes, the answer is lost, and Telethon's resend meets
    # USER_ALREADY_PARTICIPANT: the join happened, so the job succeeds.
    await admin.add_fault(me["user_id"], "drop_after", method="messages.importChatInvite", times=1)
    joined = await run(
        api, "telegram.join_chat", account_id=account["id"], target="https://t.me/+privhash1"
    )
    assert joined["status"] == "succeeded", joined
    assert joined["result"]["peer"] == expected
    dialogs = await run(api, "telegram.get_dialogs", account_id=account["id"])
    assert [d["peer"] for d in dialogs["result"]["dialogs"]] == [expected]
    # Joining again, by either spelling of the invite, is the same success.
    for target in ("t.me/joinchat/privhash1", "https://t.me/+privhash1"):
        again = await run(api, "telegram.join_chat", account_id=account["id"], target=target)
        assert again["status"] == "succeeded", again
        assert again["result"] == joined["result"]


async def test_members_past_what_telegram_lists_end_the_paging(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    # Telegram lists at most 10,000 members of a chat but counts them all: past that,
    # pages come back empty, and next_offset must not send a client round again.
    account, me = await import_account(api, admin)
    owner = await admin.create_account(first_name="Owner")
    members = [(await admin.create_account(first_name=f"M{i}"))["user_id"] for i in range(4)]
    await admin.create_chat(
        title="Crowd",
        kind="supergroup",
        creator_id=owner["user_id"],
        username="crowd_sb",
        members=[me["user_id"], *members],
    )
    await admin.set_participants_listed(4)
    walked = await run(
        api,
        "telegram.get_participants",
        account_id=account["id"],
        peer="@crowd_sb",
        limit=100,
        page_size=2,
    )
    assert walked["status"] == "succeeded", walked
    result = walked["result"]
    assert (len(result["participants"]), result["total"], result["next_offset"]) == (4, 6, None)
    past = await run(
        api, "telegram.get_participants", account_id=account["id"], peer="@crowd_sb", offset=4
    )
    assert (past["result"]["participants"], past["result"]["next_offset"]) == ([], None)
    # Within what Telegram lists, a page cut short by the limit still says where to go on.
    first = await run(
        api, "telegram.get_participants", account_id=account["id"], peer="@crowd_sb", limit=3
    )
    assert first["result"]["next_offset"] == 3


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


async def test_dropped_connections_are_survived_without_spending_tries(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    account, created = await import_account(api, admin)
    await run(api, "telegram.get_me", account_id=account["id"])  # connected
    # The next calls lose their connection before the DC answers; the client reconnects.
    await admin.add_fault(created["user_id"], "drop_before", method="users.getUsers", times=6)
    job = await run(api, "telegram.get_me", account_id=account["id"])
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1


async def test_text_goes_as_written_unless_a_parse_mode_is_asked_for(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    account, created = await import_account(api, admin)
    raw = "call __init__ with **kwargs** and `x`"
    plain = await run(api, "telegram.send_message", account_id=account["id"], peer="me", text=raw)
    marked = await run(
        api,
        "telegram.send_message",
        account_id=account["id"],
        peer="me",
        text="**bold** and `code`",
        parse_mode="markdown",
    )
    assert plain["status"] == marked["status"] == "succeeded"
    stored = {m["id"]: m["text"] for m in await admin.messages(created["user_id"])}
    assert stored[plain["result"]["message_id"]] == raw
    assert stored[marked["result"]["message_id"]] == "bold and code"
    # At the limit once parsed: 4,096 UTF-16 code units, more than that as written.
    longest = {
        "**" + "x" * 4096 + "**": "markdown",
        "<b>" + "\U0001f600" * 2048 + "</b>": "html",
    }
    for text, mode in longest.items():
        sent = await run(
            api,
            "telegram.send_message",
            account_id=account["id"],
            peer="me",
            text=text,
            parse_mode=mode,
        )
        assert sent["status"] == "succeeded", sent
        stored = {m["id"]: m["text"] for m in await admin.messages(created["user_id"])}
        assert len(stored[sent["result"]["message_id"]].encode("utf-16-le")) == 2 * 4096


async def test_a_flood_on_resolving_a_mention_defers_the_send(
    api: httpx.AsyncClient, admin: SandboxAdmin, redis: Redis
) -> None:
    account, created = await import_account(api, admin)
    await admin.create_account(username="carol_sb", first_name="Carol")
    await admin.add_fault(
        created["user_id"], "flood_wait", method="contacts.resolveUsername", seconds=30, times=1
    )
    job_id = await submit(
        api,
        "telegram.send_message",
        account_id=account["id"],
        peer="me",
        text="[hi](@carol_sb)",
        parse_mode="markdown",
    )
    waiting = await deferred_as(api, job_id, "flood_wait")
    assert waiting["status"] != "failed"
    assert await redis.exists(f"tgflow:flood:{account['id']}:contacts.resolveUsername")
    assert await admin.messages(created["user_id"]) == []


async def test_mentions_are_found_like_any_peer_and_a_mention_of_nobody_stays_text(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox
) -> None:
    account, created = await import_account(api, admin)
    carol = await admin.create_account(username="carol_sb", first_name="Carol")
    dana = await admin.create_account(phone="+15550001133", first_name="Dana")
    owner = await admin.create_account(first_name="Owner")
    await admin.create_chat(
        title="News", kind="channel", creator_id=owner["user_id"], username="news_sb"
    )
    text = (
        f"[a](+15550001133) [b](tg://user?id={dana['user_id']}) [c](@carol_sb) "
        "[d](@nobody_sb) [e](@news_sb) [f](+1) **g**"
    )
    sent = await run(
        api,
        "telegram.send_message",
        account_id=account["id"],
        peer="me",
        text=text,
        parse_mode="markdown",
    )
    assert sent["status"] == "succeeded", sent
    stored = sandbox.core.world.accounts[created["user_id"]].box[sent["result"]["message_id"]]
    assert stored.text == "a b c d e f g"
    assert [(type(e).__name__, e.offset, getattr(e, "user_id", None)) for e in stored.entities] == [
        ("MessageEntityMentionName", 0, dana["user_id"]),
        ("MessageEntityMentionName", 2, dana["user_id"]),
        ("MessageEntityMentionName", 4, carol["user_id"]),
        ("MessageEntityBold", 12, None),
    ]


async def test_phones_and_phone_links_resolve_and_own_messages_have_a_sender(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    account, created = await import_account(api, admin)
    target = await admin.create_account(phone="+15550001133", first_name="Dana")
    for spelling in ("+15550001133", "https://t.me/+15550001133"):
        resolved = await run(api, "telegram.resolve", account_id=account["id"], peer=spelling)
        assert resolved["status"] == "succeeded", resolved
        assert resolved["result"]["peer"]["id"] == target["user_id"]
    sent = await run(
        api, "telegram.send_message", account_id=account["id"], peer="+15550001133", text="hi"
    )
    assert sent["status"] == "succeeded", sent
    history = await run(
        api, "telegram.get_history", account_id=account["id"], peer="+15550001133", limit=5
    )
    assert [(m["text"], m["sender_id"]) for m in history["result"]["messages"]] == [
        ("hi", created["user_id"])
    ]
    nobody = await run(api, "telegram.resolve", account_id=account["id"], peer="+15550009999")
    assert nobody["status"] == "failed"
    assert nobody["error"]["code"] == "phone_not_occupied"
    # Resolved once, the phone is in the worker's cache: a flood on resolving phones
    # (which would defer the job for ten minutes) is never met, by a resolve or a send.
    await admin.add_fault(
        created["user_id"], "flood_wait", method="contacts.resolvePhone", seconds=600, times=1
    )
    for spelling in ("+15550001133", "https://t.me/+15550001133"):
        cached = await run(api, "telegram.resolve", account_id=account["id"], peer=spelling)
        assert cached["status"] == "succeeded", cached
        assert cached["result"]["peer"] == resolved["result"]["peer"]
    again = await run(
        api, "telegram.send_message", account_id=account["id"], peer="+15550001133", text="2"
    )
    assert again["status"] == "succeeded", again


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


async def test_a_short_flood_met_twice_is_waited_out_not_failed(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    account, created = await import_account(api, admin)
    # Under the in-client threshold: Telethon sleeps and retries once, then meets it again.
    await admin.add_fault(
        created["user_id"], "flood_wait", method="messages.sendMessage", seconds=1, times=2
    )
    sent = await run(api, "telegram.send_message", account_id=account["id"], peer="me", text="t")
    assert sent["status"] == "succeeded", sent
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


def test_a_service_messages_action_is_named_in_snake_case() -> None:
    def action(of: Any) -> str | None:
        message = types.MessageService(
            id=5, peer_id=types.PeerUser(1), date=datetime.now(UTC), action=of
        )
        named: str | None = message_out(message)["action"]
        return named

    assert action(types.MessageActionChatAddUser(users=[2])) == "chat_add_user"
    assert action(types.MessageActionSetMessagesTTL(period=86400)) == "set_messages_ttl"
    assert action(types.MessageActionChannelCreate(title="News")) == "channel_create"
