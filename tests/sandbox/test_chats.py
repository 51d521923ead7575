"""Channels and supergroups: joining, members, history, forwarding, updates."""

import asyncio
from typing import Any

import httpx
import pytest
from telethon import errors, events
from telethon.tl import functions, types

from .conftest import AccountFactory, ClientFactory, eventually


async def _chat(admin: httpx.AsyncClient, **body: object) -> dict[str, object]:
    response = await admin.post("/admin/chats", json=body)
    assert response.status_code == 201, response.text
    data: dict[str, object] = response.json()
    return data


async def test_join_public_channel_and_read_history(
    admin: httpx.AsyncClient, new_account: AccountFactory, new_client: ClientFactory
) -> None:
    owner = await new_account()
    alice = await new_account()
    await _chat(
        admin,
        title="News",
        kind="channel",
        creator_id=owner["user_id"],
        username="news_sb",
        messages=[{"text": f"post {i}"} for i in range(30)],
    )
    client = new_client(alice["session_string"])
    await client.connect()
    channel = await client.get_entity("news_sb")
    assert channel.broadcast
    assert channel.left
    await client(functions.channels.JoinChannelRequest(channel))
    posts = await client.get_messages(channel, limit=10)
    assert [m.text for m in posts] == [f"post {i}" for i in range(29, 19, -1)]
    assert posts.total == 31  # 30 posts and the creation service message
    older = await client.get_messages(channel, limit=5, offset_id=posts[-1].id)
    assert [m.text for m in older] == [f"post {i}" for i in range(19, 14, -1)]
    oldest_first = [m.text async for m in client.iter_messages(channel, reverse=True, limit=3)]
    assert oldest_first == [None, "post 0", "post 1"]  # the service message has no text
    with pytest.raises(errors.ChatWriteForbiddenError):
        await client.send_message(channel, "not an admin")
    await client.send_read_acknowledge(channel)


async def test_invite_link_join_participants_and_group_messages(
    admin: httpx.AsyncClient, new_account: AccountFactory, new_client: ClientFactory
) -> None:
    owner = await new_account(first_name="Owner")
    members = [await new_account(first_name=f"Member{i}") for i in range(3)]
    alice = await new_account(first_name="Alice")
    chat = await _chat(
        admin,
        title="Team",
        kind="supergroup",
        creator_id=owner["user_id"],
        invite_hash="teamhash1",
        members=[m["user_id"] for m in members],
    )
    client = new_client(alice["session_string"])
    await client.connect()
    with pytest.raises(errors.InviteHashInvalidError):
        await client(functions.messages.ImportChatInviteRequest("nope1234"))
    joined = await client(functions.messages.ImportChatInviteRequest("teamhash1"))
    group = joined.chats[0]
    assert group.id == chat["chat_id"]
    assert group.megagroup
    with pytest.raises(errors.UserAlreadyParticipantError):
        await client(functions.messages.ImportChatInviteRequest("teamhash1"))

    people = await client.get_participants(group)
    assert people.total == 5
    assert {p.first_name for p in people} == {"Owner", "Alice", "Member0", "Member1", "Member2"}
    searched = await client.get_participants(group, search="member1")
    assert [p.first_name for p in searched] == ["Member1"]

    sent = await client.send_message(group, "hello team")
    fetched = await client.get_messages(group, ids=[sent.id, 999])
    assert fetched[0].text == "hello team"
    assert fetched[1] is None
    stored = await admin.get(
        "/admin/messages", params={"user_id": owner["user_id"], "peer": str(chat["peer"])}
    )
    assert stored.json()["messages"][-1]["from_id"] == alice["user_id"]


async def test_forward_messages_keeps_origin_and_dedupes(
    admin: httpx.AsyncClient, new_account: AccountFactory, new_client: ClientFactory
) -> None:
    alice = await new_account()
    bob = await new_account(username="bob_fwd")
    client = new_client(alice["session_string"])
    await client.connect()
    originals = [await client.send_message("me", f"note {i}") for i in range(3)]
    forwarded = await client.forward_messages("bob_fwd", originals, "me")
    assert [m.text for m in forwarded] == ["note 0", "note 1", "note 2"]
    assert all(m.fwd_from is not None for m in forwarded)
    peer = await client.get_input_entity("bob_fwd")
    again = functions.messages.ForwardMessagesRequest(
        from_peer=types.InputPeerSelf(), id=[originals[0].id], to_peer=peer, random_id=[77]
    )
    first = await client(again)
    second = await client(
        functions.messages.ForwardMessagesRequest(
            from_peer=types.InputPeerSelf(), id=[originals[0].id], to_peer=peer, random_id=[77]
        )
    )
    first_ids = [u.id for u in first.updates if isinstance(u, types.UpdateMessageID)]
    second_ids = [u.id for u in second.updates if isinstance(u, types.UpdateMessageID)]
    assert first_ids == second_ids
    stored = (await admin.get("/admin/messages", params={"user_id": bob["user_id"]})).json()
    assert len(stored["messages"]) == 4
    assert stored["messages"][0]["fwd_from"] == alice["user_id"]


async def test_incoming_private_message_reaches_a_live_client(
    admin: httpx.AsyncClient, new_account: AccountFactory, new_client: ClientFactory
) -> None:
    alice = await new_account()
    bob = await new_account()
    client = new_client(bob["session_string"])
    received: list[str] = []

    @client.on(events.NewMessage(incoming=True))
    async def on_message(event: events.NewMessage.Event) -> None:
        received.append(event.raw_text)

    await client.connect()
    await client.get_me()
    response = await admin.post(
        "/admin/messages",
        json={"from_id": alice["user_id"], "peer": str(bob["user_id"]), "text": "ping bob"},
    )
    assert response.status_code == 201

    async def delivered() -> bool:
        return received == ["ping bob"]

    await eventually(delivered)
    dialogs = await client.get_dialogs()
    assert dialogs[0].unread_count == 1
    await client.send_read_acknowledge(dialogs[0].entity)
    assert (await client.get_dialogs())[0].unread_count == 0


async def test_channel_post_reaches_members_through_updates(
    admin: httpx.AsyncClient, new_account: AccountFactory, new_client: ClientFactory
) -> None:
    owner = await new_account()
    reader_account = await new_account()
    chat = await _chat(
        admin,
        title="Feed",
        kind="supergroup",
        creator_id=owner["user_id"],
        members=[reader_account["user_id"]],
    )
    client = new_client(reader_account["session_string"])
    received: list[str] = []
    client.add_event_handler(
        lambda e: asyncio.sleep(0, received.append(e.raw_text)), events.NewMessage()
    )
    await client.connect()
    await client.get_dialogs()  # learn the channel so its updates are tracked
    for text in ("one", "two"):
        await admin.post(
            "/admin/messages",
            json={"from_id": owner["user_id"], "peer": str(chat["peer"]), "text": text},
        )

    async def delivered() -> bool:
        return received == ["one", "two"]

    await eventually(delivered)


async def test_participants_are_paged(
    admin: httpx.AsyncClient, new_account: AccountFactory, new_client: ClientFactory
) -> None:
    owner = await new_account()
    members = [await new_account() for _ in range(230)]
    chat = await _chat(
        admin,
        title="Crowd",
        creator_id=owner["user_id"],
        members=[m["user_id"] for m in members],
    )
    client = new_client(owner["session_string"])
    await client.connect()
    group = types.InputPeerChannel(int(str(chat["chat_id"])), int(str(chat["access_hash"])))
    seen = [p.id async for p in client.iter_participants(group)]
    assert len(seen) == len(set(seen)) == 231
    page = await client(
        functions.channels.GetParticipantsRequest(
            group, types.ChannelParticipantsRecent(), offset=200, limit=100, hash=0
        )
    )
    assert (page.count, len(page.participants)) == (231, 31)


async def test_get_difference_returns_missed_messages(
    admin: httpx.AsyncClient, new_account: AccountFactory, new_client: ClientFactory
) -> None:
    alice = await new_account()
    bob = await new_account()
    client = new_client(bob["session_string"], receive_updates=False)
    await client.connect()
    state = await client(functions.updates.GetStateRequest())
    for text in ("first", "second"):
        await admin.post(
            "/admin/messages",
            json={"from_id": alice["user_id"], "peer": str(bob["user_id"]), "text": text},
        )
    diff = await client(
        functions.updates.GetDifferenceRequest(pts=state.pts, date=state.date, qts=0)
    )
    assert isinstance(diff, types.updates.Difference)
    assert [m.message for m in diff.new_messages] == ["first", "second"]
    assert diff.state.pts == state.pts + 2
    assert {u.id for u in diff.users} >= {alice["user_id"]}
    again = await client(
        functions.updates.GetDifferenceRequest(pts=diff.state.pts, date=diff.state.date, qts=0)
    )
    assert isinstance(again, types.updates.DifferenceEmpty)

    chat = await _chat(admin, title="Log", creator_id=alice["user_id"], members=[bob["user_id"]])
    channel = types.InputChannel(int(str(chat["chat_id"])), int(str(chat["access_hash"])))
    await admin.post(
        "/admin/messages",
        json={"from_id": alice["user_id"], "peer": str(chat["peer"]), "text": "in channel"},
    )
    channel_diff = await client(
        functions.updates.GetChannelDifferenceRequest(
            channel, types.ChannelMessagesFilterEmpty(), pts=1, limit=100
        )
    )
    assert [m.message for m in channel_diff.new_messages][-1] == "in channel"
    assert channel_diff.final


async def test_a_dialog_moves_to_the_archive_and_back(
    admin: httpx.AsyncClient, new_account: AccountFactory, new_client: ClientFactory
) -> None:
    alice = await new_account()
    owner = await new_account()
    friend = await new_account(username="friend_sb")
    chat = await _chat(
        admin,
        title="Quiet",
        kind="channel",
        creator_id=owner["user_id"],
        members=[alice["user_id"]],
    )
    client = new_client(alice["session_string"])
    await client.connect()
    await client.send_message("friend_sb", "hi")
    channel = next(d.entity for d in await client.get_dialogs() if d.id == chat["peer"])
    await client.edit_folder(channel, 1)  # folders.editPeerFolders
    archived = await client.get_dialogs(folder=1)
    assert [(d.id, d.folder_id) for d in archived] == [(chat["peer"], 1)]
    assert [d.id for d in await client.get_dialogs(folder=0)] == [friend["user_id"]]
    assert {d.id for d in await client.get_dialogs()} == {chat["peer"], friend["user_id"]}
    with pytest.raises(errors.FolderIdInvalidError):
        await client.edit_folder(channel, 2)
    stranger = types.InputPeerUser(owner["user_id"], owner["access_hash"])  # no dialog
    with pytest.raises(errors.PeerIdInvalidError):
        await client.edit_folder([channel, stranger], 0)  # neither moves
    assert [d.id for d in await client.get_dialogs(folder=1)] == [chat["peer"]]
    await client.edit_folder(channel, 0)
    assert await client.get_dialogs(folder=1) == []
    # The admin API files a dialog as well, and refuses one the account does not have.
    body = {"user_id": alice["user_id"], "peer": "@friend_sb", "folder_id": 1}
    response = await admin.post("/admin/folders", json=body)
    assert response.status_code == 200, response.text
    assert [d.id for d in await client.get_dialogs(folder=1)] == [friend["user_id"]]
    body = {"user_id": alice["user_id"], "peer": str(owner["user_id"])}
    response = await admin.post("/admin/folders", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "peer_id_invalid"


async def _pin(client: Any, entity: Any, pinned: bool = True) -> None:
    assert await client(functions.messages.ToggleDialogPinRequest(entity, pinned=pinned)) is True


async def test_pinned_dialogs_lead_their_folder_in_pin_order(
    admin: httpx.AsyncClient, new_account: AccountFactory, new_client: ClientFactory
) -> None:
    alice = await new_account()
    friends = [await new_account(username=f"friend{i}_sb") for i in range(7)]
    stranger = await new_account()
    client = new_client(alice["session_string"])
    await client.connect()
    for i in range(7):  # friend6's chat is the most recent
        await client.send_message(f"friend{i}_sb", f"hi {i}")
    ids = [f["user_id"] for f in friends]
    entity = {d.id: d.entity for d in await client.get_dialogs()}
    await _pin(client, entity[ids[1]])
    await _pin(client, entity[ids[3]])  # the newest pin goes on top
    listed = await client.get_dialogs()
    assert [(d.id, d.pinned) for d in listed] == [
        (ids[3], True),
        (ids[1], True),
        *((ids[i], False) for i in (6, 5, 4, 2, 0)),
    ]
    # Later pages leave them out (Telethon asks with exclude_pinned after the first).
    paged = [d.id async for d in client.iter_dialogs()]
    assert paged == [d.id for d in listed]
    raw = functions.messages.GetDialogsRequest(None, 0, types.InputPeerEmpty(), 3, 0)
    first = await client(raw)
    assert [(d.peer.user_id, bool(d.pinned)) for d in first.dialogs] == [
        (ids[3], True),
        (ids[1], True),
        (ids[6], False),
    ]
    assert isinstance(first, types.messages.DialogsSlice)
    assert first.count == 7
    top = next(m for m in first.messages if m.peer_id.user_id == ids[6])
    after = functions.messages.GetDialogsRequest(
        top.date, top.id, entity[ids[6]], 3, 0, exclude_pinned=True
    )
    assert [d.peer.user_id for d in (await client(after)).dialogs] == [ids[5], ids[4], ids[2]]
    # Without exclude_pinned the pinned dialogs lead a later page as well.
    after.exclude_pinned = None
    assert [d.peer.user_id for d in (await client(after)).dialogs] == [ids[3], ids[1], ids[5]]
    excluded = functions.messages.GetDialogsRequest(
        None, 0, types.InputPeerEmpty(), 100, 0, exclude_pinned=True
    )
    unpinned = await client(excluded)
    assert [d.peer.user_id for d in unpinned.dialogs] == [ids[i] for i in (6, 5, 4, 2, 0)]
    assert isinstance(unpinned, types.messages.Dialogs)  # all the request could list
    # Reordering puts the pinned dialogs named first; force unpins the others.
    order = [entity[ids[1]], entity[ids[3]]]
    assert await client(functions.messages.ReorderPinnedDialogsRequest(0, order)) is True
    assert [d.id for d in (await client.get_dialogs())[:2]] == [ids[1], ids[3]]
    force = functions.messages.ReorderPinnedDialogsRequest(0, [entity[ids[3]]], force=True)
    assert await client(force) is True
    pinned = await client(functions.messages.GetPinnedDialogsRequest(0))
    assert [d.peer.user_id for d in pinned.dialogs] == [ids[3]]
    assert ids[3] in {u.id for u in pinned.users}
    await _pin(client, entity[ids[3]], pinned=False)
    assert not any(d.pinned for d in await client.get_dialogs())
    # Five at most in the main list; unpinning makes room again.
    for i in range(5):
        await _pin(client, entity[ids[i]])
    await _pin(client, entity[ids[0]])  # pinned already: nothing changes
    with pytest.raises(errors.PinnedDialogsTooMuchError):
        await _pin(client, entity[ids[5]])
    with pytest.raises(errors.PinnedDialogsTooMuchError):
        await client(functions.messages.ReorderPinnedDialogsRequest(0, [entity[ids[5]]]))
    await _pin(client, entity[ids[4]], pinned=False)
    await _pin(client, entity[ids[5]])
    no_dialog = types.InputPeerUser(stranger["user_id"], stranger["access_hash"])
    with pytest.raises(errors.PeerHistoryEmptyError):
        await _pin(client, no_dialog)


async def test_the_archive_pins_its_own_dialogs(
    admin: httpx.AsyncClient, new_account: AccountFactory, new_client: ClientFactory
) -> None:
    alice = await new_account()
    friends = [await new_account(username=f"friend{i}_sb") for i in range(7)]
    client = new_client(alice["session_string"])
    await client.connect()
    for i in range(7):
        await client.send_message(f"friend{i}_sb", f"hi {i}")
    ids = [f["user_id"] for f in friends]
    entity = {d.id: d.entity for d in await client.get_dialogs()}
    for i in range(5):
        await _pin(client, entity[ids[i]])
    # Archiving a pinned dialog unpins it; the archive has pins of its own, past the
    # main list's five.
    await client.edit_folder([entity[ids[0]], entity[ids[5]], entity[ids[6]]], 1)
    await _pin(client, entity[ids[5]])
    await _pin(client, entity[ids[0]])
    archived = await client.get_dialogs(folder=1)
    assert [(d.id, d.pinned) for d in archived] == [
        (ids[0], True),
        (ids[5], True),
        (ids[6], False),
    ]
    main = await client.get_dialogs(folder=0)
    assert [(d.id, d.pinned) for d in main] == [(ids[i], True) for i in (4, 3, 2, 1)]
    pinned = await client(functions.messages.GetPinnedDialogsRequest(1))
    assert [d.peer.user_id for d in pinned.dialogs] == [ids[0], ids[5]]
    with pytest.raises(errors.PeerIdInvalidError):  # a dialog of the other folder
        await client(functions.messages.ReorderPinnedDialogsRequest(0, [entity[ids[5]]]))
    with pytest.raises(errors.FolderIdInvalidError):
        await client(functions.messages.GetPinnedDialogsRequest(2))
    # The admin API pins and unpins as well, and refuses a chat the account lacks.
    body = {"user_id": alice["user_id"], "peer": "@friend6_sb"}
    response = await admin.post("/admin/pins", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["pinned_in_folder"] == [ids[6], ids[0], ids[5]]
    body = {"user_id": alice["user_id"], "peer": "@friend0_sb", "pinned": False}
    response = await admin.post("/admin/pins", json=body)
    assert response.json()["pinned_in_folder"] == [ids[6], ids[5]]
    owner = await new_account()
    chat = await _chat(admin, title="Closed", kind="channel", creator_id=owner["user_id"])
    body = {"user_id": alice["user_id"], "peer": str(chat["peer"])}
    response = await admin.post("/admin/pins", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "channel_private"
