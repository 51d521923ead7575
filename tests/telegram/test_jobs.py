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
from tests.helpers import auth, eventually, wait_for_status
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
    target = await admin.create_account(
        username="carol_sb", first_name="Carol", last_name="Danvers"
    )
    resolved = await run(api, "telegram.resolve", account_id=account["id"], peer="@carol_sb")
    assert resolved["result"]["peer"] == {
        "id": target["user_id"],
        "kind": "user",
        "username": "carol_sb",
        "title": "Carol Danvers",
    }
    missing = await run(api, "telegram.resolve", account_id=account["id"], peer="@nobody_here")
    assert missing["status"] == "failed"
    assert missing["error"]["code"] == "username_not_occupied"


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


async def test_a_flood_on_finding_peers_holds_no_job_whose_peer_is_known(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    """A peer the client has seen is found without the network: a flood wait on the
    method that would have looked it up holds only jobs whose peers are unknown."""
    account, created = await import_account(api, admin)
    alice = await admin.create_account(username="alice_sb", first_name="Alice")
    await admin.create_account(username="zed_sb", first_name="Zed")
    first = await run(
        api, "telegram.send_message", account_id=account["id"], peer="@alice_sb", text="1"
    )
    assert first["status"] == "succeeded", first
    floods = [("contacts.resolveUsername", "telegram.resolve", {"peer": "@zed_sb"})]
    floods.append(("users.getUsers", "telegram.get_me", {}))
    for method, job_type, params in floods:
        await admin.add_fault(
            created["user_id"], "flood_wait", method=method, seconds=3600, times=1
        )
        held = await submit(api, job_type, account_id=account["id"], **params)
        await deferred_as(api, held, "flood_wait")
    for peer, text, mode in [
        ("@alice_sb", "2", None),
        (str(alice["user_id"]), "3", None),
        ("me", "[hi](@alice_sb)", "markdown"),  # a mention is found the same way
    ]:
        sent = await run(
            api,
            "telegram.send_message",
            account_id=account["id"],
            peer=peer,
            text=text,
            parse_mode=mode,
        )
        assert sent["status"] == "succeeded", (peer, sent)
    to_alice = await admin.messages(created["user_id"], alice["user_id"])
    assert sorted(m["text"] for m in to_alice) == ["1", "2", "3"]
    saved = await admin.messages(created["user_id"], created["user_id"])
    assert [m["text"] for m in saved] == ["hi"]


def test_a_basic_groups_id_is_looked_up_as_a_chat() -> None:
    assert telegram_tasks._lookup("-123") == ("messages.getChats", -123)
    assert telegram_tasks._lookup("-1001234567890") == ("channels.getChannels", -1001234567890)
    assert telegram_tasks._lookup("42") == ("users.getUsers", 42)


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


def test_media_is_named_in_snake_case_and_a_link_preview_is_no_media() -> None:
    def media(of: Any) -> str | None:
        message = types.Message(
            id=5,
            peer_id=types.PeerUser(1),
            date=datetime.now(UTC),
            message="see https://example.com",
            media=of,
        )
        named: str | None = message_out(message)["media"]
        return named

    assert media(types.MessageMediaWebPage(webpage=types.WebPageEmpty(id=1))) is None
    assert media(types.MessageMediaEmpty()) is None
    assert media(None) is None
    assert media(types.MessageMediaGeoLive(geo=types.GeoPointEmpty(), period=60)) == "geo_live"
    assert media(types.MessageMediaPaidMedia(stars_amount=1, extended_media=[])) == "paid_media"
    assert media(types.MessageMediaPhoto()) == "photo"


async def test_numeric_peers_may_be_json_numbers_and_typed_params_reach_the_worker(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    account, created = await import_account(api, admin)
    first = await run(api, "telegram.send_message", account_id=account["id"], peer="me", text="a")
    own = created["user_id"]  # a JSON number, stored as the peer's one spelling
    reply = await submit(
        api,
        "telegram.send_message",
        account_id=account["id"],
        peer=own,
        text="b",
        reply_to=first["result"]["message_id"],
        silent=True,
        link_preview=False,
    )
    stored = (await api.get(f"/v1/jobs/{reply}", headers=auth())).json()["params"]
    assert (stored["peer"], stored["silent"], stored["link_preview"]) == (str(own), True, False)
    sent = await wait_for_status(api, reply, {"succeeded", "failed"}, timeout=15)
    assert sent["status"] == "succeeded", sent
    found = await run(
        api,
        "telegram.get_messages",
        account_id=account["id"],
        peer=own,
        ids=[sent["result"]["message_id"]],
    )
    assert [(m["text"], m["reply_to"]) for m in found["result"]["messages"]] == [
        ("b", first["result"]["message_id"])
    ]
