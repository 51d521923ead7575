"""Chats through jobs: joining, reading members page by page, forwarding, invite links
and the ids results name chats by."""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import httpx
import pytest
from telethon.tl import types

from services.sandbox import messaging as sandbox_messaging
from services.sandbox import state as sandbox_state
from services.sandbox.admin_client import SandboxAdmin
from services.sandbox.server import Sandbox
from services.worker.tasks import telegram as telegram_tasks
from services.worker.telegram.vault import Vault
from shared.config import GatewaySettings
from shared.jobs.dialog_cursor import DialogCursor, PeerKind
from tests.helpers import auth, eventually, wait_for_status
from tests.telegram.conftest import crowd, import_account, marked_id, requests_counted, serving
from tests.telegram.test_jobs import run, submit


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
    assert joined["result"]["peer"] == {
        "id": marked_id(chat),
        "kind": "supergroup",
        "username": "news_sb",
        "title": "News",
    }
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
    assert marked_id(chat) in [d["peer"]["id"] for d in dialogs["result"]["dialogs"]]
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
    expected = {"id": marked_id(chat), "kind": "channel", "username": None, "title": "Private"}
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


async def test_a_chats_id_in_a_result_is_taken_back_as_its_peer(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    """Results name a chat by its marked id, the spelling jobs take as a peer and
    messages' sender_id uses; a supergroup and a channel are told apart."""
    account, me = await import_account(api, admin)
    owner = await admin.create_account(first_name="Owner")
    team = await admin.create_chat(
        title="Team", kind="supergroup", creator_id=owner["user_id"], members=[me["user_id"]]
    )
    news = await admin.create_chat(
        title="News",
        kind="channel",
        creator_id=owner["user_id"],
        members=[me["user_id"]],
        messages=[{"text": "post"}],
    )
    dialogs = await run(api, "telegram.get_dialogs", account_id=account["id"])
    peers = {d["peer"]["title"]: d["peer"] for d in dialogs["result"]["dialogs"]}
    assert {t: (p["id"], p["kind"]) for t, p in peers.items()} == {
        "Team": (marked_id(team), "supergroup"),
        "News": (marked_id(news), "channel"),
    }
    for peer in peers.values():
        resolved = await run(api, "telegram.resolve", account_id=account["id"], peer=peer["id"])
        assert resolved["result"]["peer"] == peer
    members = await run(
        api, "telegram.get_participants", account_id=account["id"], peer=peers["Team"]["id"]
    )
    assert members["result"]["total"] == 2
    history = await run(
        api, "telegram.get_history", account_id=account["id"], peer=peers["News"]["id"], limit=1
    )
    assert [m["sender_id"] for m in history["result"]["messages"]] == [peers["News"]["id"]]


def test_a_basic_group_is_a_group_named_by_its_negative_id() -> None:
    chat = types.Chat(
        id=123,
        title="Old",
        photo=types.ChatPhotoEmpty(),
        participants_count=3,
        date=None,
        version=1,
    )
    assert telegram_tasks.peer_out(chat).model_dump() == {
        "id": -123,
        "kind": "group",
        "username": None,
        "title": "Old",
    }


async def test_an_invite_to_a_chat_not_joined_yet_is_told_from_a_bad_one(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    account, _ = await import_account(api, admin)
    owner = await admin.create_account(first_name="Owner")
    others = [(await admin.create_account(first_name=f"M{i}"))["user_id"] for i in range(2)]
    chat = await admin.create_chat(
        title="Priv",
        kind="supergroup",
        creator_id=owner["user_id"],
        invite_hash="privhash1",
        members=others,
        messages=[{"text": "inside"}],
    )
    link = "https://t.me/+privhash1"
    outside = {
        "title": "Priv",
        "kind": "supergroup",
        "member_count": 3,
    }
    for job_type, params in [
        ("telegram.resolve", {}),
        ("telegram.get_history", {"limit": 1}),
    ]:
        refused = await run(api, job_type, account_id=account["id"], peer=link, **params)
        assert refused["status"] == "failed", refused
        assert (refused["error"]["code"], refused["error"]["details"]) == ("not_a_member", outside)
    bad = await run(api, "telegram.resolve", account_id=account["id"], peer="t.me/+nosuchhash")
    assert bad["error"]["code"] == "invite_hash_invalid"
    joined = await run(api, "telegram.join_chat", account_id=account["id"], target=link)
    assert joined["status"] == "succeeded", joined
    resolved = await run(api, "telegram.resolve", account_id=account["id"], peer=link)
    assert resolved["result"] == joined["result"]
    assert resolved["result"]["peer"]["id"] == marked_id(chat)
    history = await run(api, "telegram.get_history", account_id=account["id"], peer=link, limit=1)
    assert [m["text"] for m in history["result"]["messages"]] == ["inside"]


async def test_members_past_what_telegram_lists_end_the_paging(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    # Telegram lists at most 10,000 members of a chat but counts them all: past that,
    # pages come back empty, and next_offset must not send a client round again.
    account, me = await import_account(api, admin)
    await crowd(admin, me, 4)
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


async def test_a_member_listing_a_flood_cuts_short_keeps_its_pages_and_goes_on_from_there(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    account, me = await import_account(api, admin)
    others = await crowd(admin, me, 9)
    # 11 members in pages of 2: the fourth page meets a flood wait longer than the
    # client sleeps through (faults match in order: three pages pass first).
    method = "channels.getParticipants"
    await admin.add_fault(me["user_id"], "delay", method=method, seconds=0, times=3)
    await admin.add_fault(me["user_id"], "flood_wait", method=method, seconds=4, times=1)
    params = {"account_id": account["id"], "peer": "@crowd_sb", "limit": 100, "page_size": 2}
    first = await run(api, "telegram.get_participants", **params)
    assert first["status"] == "succeeded", first
    assert first["attempts"] == 1
    cut = first["result"]
    assert (len(cut["participants"]), cut["next_offset"], cut["cut_short"]) == (6, 6, "flood_wait")
    rest = await run(api, "telegram.get_participants", **params, offset=cut["next_offset"])
    assert rest["status"] == "succeeded", rest
    assert (rest["result"]["next_offset"], rest["result"]["cut_short"]) == (None, None)
    listed = [u["id"] for u in cut["participants"] + rest["result"]["participants"]]
    assert sorted(listed) == sorted([me["user_id"], *others])
    assert requests_counted(account["id"], "ok", method) == 6  # no page fetched twice


async def tied_dialogs(
    admin: SandboxAdmin, me: dict[str, Any], monkeypatch: pytest.MonkeyPatch, chats: int
) -> list[int]:
    """``chats`` private chats and ``chats`` channels of ``me`` whose top messages all
    carry the same date (each channel's top message id is 2 as well): the marked ids."""
    frozen = int(time.time())
    ids = []
    with monkeypatch.context() as clock:
        clock.setattr(sandbox_messaging, "now", lambda: frozen)
        clock.setattr(sandbox_state, "now", lambda: frozen)
        owner = await admin.create_account(first_name="Owner")
        for i in range(chats):
            writer = await admin.create_account(first_name=f"W{i}")
            await admin.post_message(writer["user_id"], me["user_id"], f"hello {i}")
            ids.append(writer["user_id"])
            chat = await admin.create_chat(
                title=f"C{i}",
                kind="channel",
                creator_id=owner["user_id"],
                members=[me["user_id"]],
                messages=[{"text": "post"}],
            )
            ids.append(marked_id(chat))
    return ids


async def test_dialogs_page_on_with_next_offset_without_gap_or_repeat_on_any_worker(
    sandbox: Sandbox, admin: SandboxAdmin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten chats, every one's top message of the same second, listed four at a time in
    requests of three: the cursor tells ties apart, and a worker whose client never saw
    the chat it names (a new worker) goes on from it."""
    async with serving(sandbox) as api:
        account, me = await import_account(api, admin)
        chats = await tied_dialogs(admin, me, monkeypatch, 5)
        every = await run(api, "telegram.get_dialogs", account_id=account["id"])
        assert every["result"]["next_offset"] is None
        listed = [d["peer"]["id"] for d in every["result"]["dialogs"]]
        assert sorted(listed) == sorted(chats)
        first = await run(
            api, "telegram.get_dialogs", account_id=account["id"], limit=4, page_size=3
        )
        assert first["status"] == "succeeded", first
        assert first["progress"] == {"pages": 2, "fetched": 4}  # a request of 3, one of 1
        assert first["result"]["cut_short"] is None
        offset = first["result"]["next_offset"]
        assert offset is not None
    pages = [d["peer"]["id"] for d in first["result"]["dialogs"]]
    requests = requests_counted(account["id"], "ok", "messages.getDialogs")
    async with serving(sandbox) as api:  # a new worker: its client has seen no chat yet
        while offset is not None:
            page = await run(
                api,
                "telegram.get_dialogs",
                account_id=account["id"],
                offset=offset,
                limit=4,
                page_size=3,
            )
            assert page["status"] == "succeeded", page
            pages += [d["peer"]["id"] for d in page["result"]["dialogs"]]
            offset = page["result"]["next_offset"]
    assert pages == listed
    # A job of two requests (3 + 1 chats), then one whose request came back short (2 of
    # 3: the end): the offset peer went as the cursor named it, nothing was looked up.
    assert requests_counted(account["id"], "ok", "messages.getDialogs") == requests + 3


async def test_archived_chats_are_listed_apart_and_paged_by_their_own_cursor(
    api: httpx.AsyncClient, admin: SandboxAdmin, monkeypatch: pytest.MonkeyPatch
) -> None:
    account, me = await import_account(api, admin)
    chats = await tied_dialogs(admin, me, monkeypatch, 3)
    archived = chats[1:4]  # a channel between two private chats
    for peer in archived:
        await admin.file_dialog(me["user_id"], peer)
    main = await run(api, "telegram.get_dialogs", account_id=account["id"])
    assert sorted(d["peer"]["id"] for d in main["result"]["dialogs"]) == sorted(
        set(chats) - set(archived)
    )
    first = await run(api, "telegram.get_dialogs", account_id=account["id"], archived=True, limit=2)
    assert first["status"] == "succeeded", first
    offset = first["result"]["next_offset"]
    rest = await run(
        api, "telegram.get_dialogs", account_id=account["id"], archived=True, offset=offset
    )
    assert rest["result"]["next_offset"] is None
    walked = [d["peer"]["id"] for d in first["result"]["dialogs"] + rest["result"]["dialogs"]]
    assert sorted(walked) == sorted(archived)
    assert len(walked) == 3
    # The archive's cursor goes on in the archive only.
    body = {
        "type": "telegram.get_dialogs",
        "params": {"account_id": account["id"], "offset": offset},
    }
    response = await api.post("/v1/jobs", json=body, headers=auth())
    assert response.status_code == 422, response.text
    assert [(d["field"], d["type"]) for d in response.json()["error"]["details"]] == [
        ("params.offset", "invalid_cursor")
    ]


_ACCOUNT = uuid.uuid4()


def _cursor(**fields: Any) -> str:
    """A cursor of ``fields`` for ``_ACCOUNT``, tagged as the gateway checks it: what
    the gateway refuses of these it refuses for its form."""
    key = GatewaySettings().dialog_cursor_key()
    return DialogCursor(**{"folder": 0, **fields}).encode(key, _ACCOUNT)


@pytest.mark.parametrize(
    "offset",
    [
        "",
        "not a cursor",
        "A" * 52,  # base64url of the right length, version 0
        _cursor(kind=PeerKind.USER, peer_id=5, message_id=3)[:-1] + "!",
        _cursor(kind=PeerKind.USER, peer_id=5, message_id=3) + "AAAA",
        _cursor(kind=PeerKind.USER, peer_id=0, message_id=3),  # no chat
        _cursor(kind=PeerKind.CHAT, peer_id=5, access_hash=7),  # basic groups have none
        _cursor(kind=PeerKind.NONE, date=5),  # the list past its pinned chats: no date
        _cursor(kind=PeerKind.PINNED),  # within the pinned chats, none listed
        _cursor(kind=PeerKind.PINNED, message_id=2, peer_id=5),  # counts them, names none
        _cursor(kind=PeerKind.CHANNEL, peer_id=5, message_id=-1),
        _cursor(folder=1, kind=PeerKind.USER, peer_id=5),  # the archive's
    ],
)
async def test_an_offset_no_listing_returned_is_422_before_any_worker(
    api: httpx.AsyncClient, offset: str
) -> None:
    await refused_cursor(api, str(_ACCOUNT), offset)


async def refused_cursor(
    api: httpx.AsyncClient, account_id: str, offset: str, tenant: str = "acme"
) -> None:
    """A listing of ``account_id`` from ``offset`` is refused: 422, ``invalid_cursor``."""
    body = {"type": "telegram.get_dialogs", "params": {"account_id": account_id, "offset": offset}}
    response = await api.post("/v1/jobs", json=body, headers=auth(tenant))
    assert response.status_code == 422, (offset, response.text)
    error = response.json()["error"]
    assert error["code"] == "invalid_params"
    assert [(d["field"], d["type"]) for d in error["details"]] == [
        ("params.offset", "invalid_cursor")
    ]


async def listed_past_one(api: httpx.AsyncClient, admin: SandboxAdmin) -> tuple[str, str]:
    """An account with two chats, a private one and a channel, listed one chat at a
    time: (its id, the first next_offset)."""
    account, me = await import_account(api, admin)
    writer = await admin.create_account(first_name="Writer")
    await admin.post_message(writer["user_id"], me["user_id"], "hello")
    await admin.create_chat(
        title="C",
        kind="channel",
        creator_id=writer["user_id"],
        members=[me["user_id"]],
        messages=[{"text": "post"}],
    )
    job = await run(api, "telegram.get_dialogs", account_id=account["id"], limit=1)
    assert job["status"] == "succeeded", job
    assert len(job["result"]["dialogs"]) == 1
    offset: str = job["result"]["next_offset"]
    assert offset is not None
    return account["id"], offset


@pytest.mark.parametrize("tenant", ["acme", "globex"])
async def test_another_accounts_cursor_is_422_before_any_worker(
    api: httpx.AsyncClient, admin: SandboxAdmin, tenant: str
) -> None:
    """The next_offset of one account's listing, passed to a listing of another (of the
    same tenant, of another one): its peer's access hash is the first account's, and
    the other's list does not hold that chat. Refused before any job exists."""
    _, offset = await listed_past_one(api, admin)
    other, _ = await import_account(api, admin, tenant)
    await refused_cursor(api, other["id"], offset, tenant)
    assert requests_counted(other["id"], "ok", "messages.getDialogs") == 0


async def test_a_cursor_altered_in_any_byte_is_422_before_any_worker(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    account_id, offset = await listed_past_one(api, admin)
    rest = await run(api, "telegram.get_dialogs", account_id=account_id, offset=offset)
    assert len(rest["result"]["dialogs"]) == 1  # the cursor as returned goes on
    raw = base64.urlsafe_b64decode(offset)
    for index in range(len(raw)):  # the folder, the date, the peer, its hash, the tag...
        altered = bytearray(raw)
        altered[index] ^= 1
        await refused_cursor(api, account_id, base64.urlsafe_b64encode(altered).decode())
    assert requests_counted(account_id, "ok", "messages.getDialogs") == 2


async def test_a_worker_whose_secret_changed_refuses_a_cursor_without_a_request(
    sandbox: Sandbox, admin: SandboxAdmin
) -> None:
    """A job accepted with a cursor the gateway could check, run by a worker whose
    signing secret differs (rotated since): the worker fails it as invalid_cursor and
    asks Telegram nothing."""
    vault = Vault.generate_entry()  # sessions stay readable whatever the secret
    async with serving(sandbox, vault_keys=vault) as api:
        account_id, offset = await listed_past_one(api, admin)
    async with serving(sandbox, vault_keys=vault, secret_key="a-rotated-secret") as api:
        job = await run(api, "telegram.get_dialogs", account_id=account_id, offset=offset)
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "invalid_cursor", job
    assert requests_counted(account_id, "ok", "messages.getDialogs") == 1


async def test_a_chat_listing_a_flood_cuts_short_keeps_its_pages_and_goes_on_from_there(
    api: httpx.AsyncClient, admin: SandboxAdmin, monkeypatch: pytest.MonkeyPatch
) -> None:
    account, me = await import_account(api, admin)
    chats = await tied_dialogs(admin, me, monkeypatch, 3)
    # Six chats in requests of two: the second meets a flood wait longer than the
    # client sleeps through.
    method = "messages.getDialogs"
    await admin.add_fault(me["user_id"], "delay", method=method, seconds=0, times=1)
    await admin.add_fault(me["user_id"], "flood_wait", method=method, seconds=4, times=1)
    params = {"account_id": account["id"], "page_size": 2}
    first = await run(api, "telegram.get_dialogs", **params)
    assert first["status"] == "succeeded", first
    cut = first["result"]
    assert (len(cut["dialogs"]), cut["cut_short"]) == (2, "flood_wait")
    rest = await run(api, "telegram.get_dialogs", **params, offset=cut["next_offset"])
    assert rest["status"] == "succeeded", rest
    assert (rest["result"]["next_offset"], rest["result"]["cut_short"]) == (None, None)
    listed = [d["peer"]["id"] for d in cut["dialogs"] + rest["result"]["dialogs"]]
    assert sorted(listed) == sorted(chats)
    assert requests_counted(account["id"], "ok", method) == 4  # no page fetched twice


async def walk(api: httpx.AsyncClient, **params: Any) -> list[tuple[int, bool]]:
    """The chat list as jobs of ``params`` list it going on from each next_offset:
    (marked id, pinned) per chat."""
    listed: list[tuple[int, bool]] = []
    offset = None
    while True:
        page = await run(api, "telegram.get_dialogs", **params, offset=offset)
        assert page["status"] == "succeeded", page
        listed += [(d["peer"]["id"], d["pinned"]) for d in page["result"]["dialogs"]]
        offset = page["result"]["next_offset"]
        if offset is None:
            return listed


async def test_pinned_chats_lead_the_list_once_and_paging_goes_on_right_after_them(
    api: httpx.AsyncClient, admin: SandboxAdmin, monkeypatch: pytest.MonkeyPatch
) -> None:
    account, me = await import_account(api, admin)
    await tied_dialogs(admin, me, monkeypatch, 3)
    every = await run(api, "telegram.get_dialogs", account_id=account["id"])
    order = [d["peer"]["id"] for d in every["result"]["dialogs"]]
    # The three last chats pinned, not in their own order: the newest pin on top.
    for chat in (order[3], order[5], order[4]):
        await admin.pin_dialog(me["user_id"], chat)
    expected = [(order[i], i >= 3) for i in (4, 5, 3, 0, 1, 2)]
    whole = await run(api, "telegram.get_dialogs", account_id=account["id"])
    assert [(d["peer"]["id"], d["pinned"]) for d in whole["result"]["dialogs"]] == expected
    # Pages smaller than the pinned chats, in one job and in jobs going on from each
    # other's next_offset; pages that end with the pinned ones, or past them.
    for page_size, limit in [(2, 100), (1, 100), (2, 2), (3, 3), (1, 2), (4, 4), (4, 2)]:
        params = {"account_id": account["id"], "page_size": page_size, "limit": limit}
        assert await walk(api, **params) == expected, (page_size, limit)


async def test_the_archive_lists_its_own_pinned_chats_and_pages_within_them(
    api: httpx.AsyncClient, admin: SandboxAdmin, monkeypatch: pytest.MonkeyPatch
) -> None:
    account, me = await import_account(api, admin)
    chats = await tied_dialogs(admin, me, monkeypatch, 3)
    for chat in chats[:4]:
        await admin.file_dialog(me["user_id"], chat)
    archived = await run(api, "telegram.get_dialogs", account_id=account["id"], archived=True)
    order = [d["peer"]["id"] for d in archived["result"]["dialogs"]]
    for chat in (order[3], order[2]):
        await admin.pin_dialog(me["user_id"], chat)
    await admin.pin_dialog(me["user_id"], chats[5])  # the main list's own
    main = await walk(api, account_id=account["id"], page_size=1, limit=1)
    assert main == [(chats[5], True), (chats[4], False)]
    expected = [(order[2], True), (order[3], True), (order[0], False), (order[1], False)]
    for page_size, limit in [(1, 1), (2, 2), (1, 100), (3, 1)]:
        params = {"page_size": page_size, "limit": limit, "archived": True}
        assert await walk(api, account_id=account["id"], **params) == expected, params


async def test_chats_that_move_while_a_listing_pages_are_listed_at_most_once(
    api: httpx.AsyncClient, admin: SandboxAdmin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between two requests of a listing, a pinned chat listed already is unpinned (it
    falls back into the list below the cursor: Telegram lists it again) and messages
    move a listed chat and an unlisted one to the top (above the cursor)."""
    account, me = await import_account(api, admin)
    frozen = int(time.time())
    with monkeypatch.context() as clock:
        clock.setattr(sandbox_messaging, "now", lambda: frozen)
        writers = [(await admin.create_account(first_name=f"W{i}"))["user_id"] for i in range(6)]
        for writer in writers:
            await admin.post_message(writer, me["user_id"], "hello")
    order = writers[::-1]  # one second: the latest message's chat first
    await admin.pin_dialog(me["user_id"], order[5])
    method = "messages.getDialogs"
    await admin.add_fault(me["user_id"], "delay", method=method, seconds=0, times=1)
    await admin.add_fault(me["user_id"], "delay", method=method, seconds=2, times=1)
    job_id = await submit(api, "telegram.get_dialogs", account_id=account["id"], page_size=3)

    async def first_page_read() -> bool:
        job = (await api.get(f"/v1/jobs/{job_id}", headers=auth())).json()
        return bool(job["progress"] and job["progress"]["pages"] == 1)

    await eventually(first_page_read)  # [order[5] pinned, order[0], order[1]]
    with monkeypatch.context() as clock:
        clock.setattr(sandbox_messaging, "now", lambda: frozen + 5)
        await admin.pin_dialog(me["user_id"], order[5], pinned=False)
        await admin.post_message(order[0], me["user_id"], "listed, now on top")
        await admin.post_message(order[3], me["user_id"], "not listed, now on top")
    done = await wait_for_status(api, job_id, {"succeeded", "failed"}, timeout=15)
    assert done["status"] == "succeeded", done
    listed = [(d["peer"]["id"], d["pinned"]) for d in done["result"]["dialogs"]]
    # The second page is order[2], order[4] and order[5] again, left out; order[3] is
    # above the cursor now: this listing misses it, the next from the top has it first.
    assert listed == [(order[5], True), *((order[i], False) for i in (0, 1, 2, 4))]
    again = await run(api, "telegram.get_dialogs", account_id=account["id"], limit=2)
    assert [d["peer"]["id"] for d in again["result"]["dialogs"]] == [order[3], order[0]]
