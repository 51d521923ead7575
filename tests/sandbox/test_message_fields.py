"""sendMessage's reply_to, entities and silent, as the stock Telethon client sees them."""

import asyncio

import httpx
from telethon import TelegramClient, events
from telethon.tl import custom, functions, types

from .conftest import AccountFactory, ClientFactory, eventually


async def _online(new_client: ClientFactory, account: dict[str, object]) -> TelegramClient:
    client = new_client(account["session_string"])
    await client.connect()
    await client.get_me()  # the first call after connect starts the update loop
    return client


def _collect(client: TelegramClient) -> list[custom.Message]:
    """Record every incoming message the client's update loop delivers."""
    received: list[custom.Message] = []
    client.add_event_handler(
        lambda e: asyncio.sleep(0, received.append(e.message)), events.NewMessage(incoming=True)
    )
    return received


async def _wait_for(received: list[custom.Message], count: int) -> None:
    async def arrived() -> bool:
        return len(received) >= count

    await eventually(arrived)


async def test_private_reply_points_at_each_partys_own_copy(
    new_account: AccountFactory, new_client: ClientFactory
) -> None:
    alice_account = await new_account(username="alice_reply")
    bob_account = await new_account(username="bob_reply")
    alice = await _online(new_client, alice_account)
    bob = await _online(new_client, bob_account)
    for i in range(3):  # shift alice's ids so the two boxes number differently
        await alice.send_message("me", f"note {i}")
    pushed = _collect(bob)

    question = await bob.send_message("alice_reply", "question?")
    [question_at_alice] = await alice.get_messages("bob_reply", limit=1)
    assert question_at_alice.id != question.id
    answer = await alice.send_message("bob_reply", "answer", reply_to=question_at_alice.id)

    [answer_at_alice] = await alice.get_messages("bob_reply", ids=[answer.id])
    assert answer_at_alice.reply_to.reply_to_msg_id == question_at_alice.id
    [answer_at_bob] = await bob.get_messages("alice_reply", limit=1)
    assert answer_at_bob.text == "answer"
    assert answer_at_bob.reply_to.reply_to_msg_id == question.id
    assert (await answer_at_bob.get_reply_message()).text == "question?"
    await _wait_for(pushed, 1)
    assert pushed[0].reply_to.reply_to_msg_id == question.id


async def test_reply_to_a_message_missing_from_the_chat_has_no_header(
    new_account: AccountFactory, new_client: ClientFactory
) -> None:
    alice_account = await new_account(username="alice_noreply")
    await new_account(username="bob_noreply")
    bob_account = await new_account(username="carol_noreply")
    alice = await _online(new_client, alice_account)
    bob = await _online(new_client, bob_account)
    pushed = _collect(bob)
    elsewhere = await alice.send_message("bob_noreply", "to someone else")
    anchor = await alice.send_message("carol_noreply", "anchor")

    orphan = await alice.send_message("carol_noreply", "orphan", reply_to=999)
    stray = await alice.send_message("carol_noreply", "stray", reply_to=elsewhere.id)
    kept = await alice.send_message("carol_noreply", "kept", reply_to=anchor.id)

    mine = await alice.get_messages("carol_noreply", ids=[orphan.id, stray.id, kept.id])
    assert [m.reply_to for m in mine[:2]] == [None, None]
    assert mine[2].reply_to.reply_to_msg_id == anchor.id
    theirs = await bob.get_messages("alice_noreply", limit=3)
    assert [m.text for m in theirs] == ["kept", "stray", "orphan"]
    assert [m.reply_to is None for m in theirs] == [False, True, True]
    await _wait_for(pushed, 4)
    assert [(m.text, m.reply_to is None) for m in pushed[1:]] == [
        ("orphan", True),
        ("stray", True),
        ("kept", False),
    ]


async def test_group_reply_keeps_the_shared_id(
    admin: httpx.AsyncClient, new_account: AccountFactory, new_client: ClientFactory
) -> None:
    owner = await new_account()
    member = await new_account()
    response = await admin.post(
        "/admin/chats",
        json={
            "title": "Replies",
            "kind": "supergroup",
            "creator_id": owner["user_id"],
            "members": [member["user_id"]],
            "messages": [{"text": "topic"}],
        },
    )
    assert response.status_code == 201, response.text
    peer = response.json()["peer"]
    client = await _online(new_client, member)
    await client.get_dialogs()  # learn the group's access hash
    [topic] = await client.get_messages(peer, limit=1)

    reply = await client.send_message(peer, "on topic", reply_to=topic.id)
    orphan = await client.send_message(peer, "nowhere", reply_to=topic.id + 100)

    owner_client = await _online(new_client, owner)
    await owner_client.get_dialogs()
    seen = await owner_client.get_messages(peer, ids=[reply.id, orphan.id])
    assert seen[0].reply_to.reply_to_msg_id == topic.id
    assert seen[1].reply_to is None


async def test_markdown_entities_come_back_as_entities(
    new_account: AccountFactory, new_client: ClientFactory
) -> None:
    alice_account = await new_account(username="alice_md")
    bob_account = await new_account(username="bob_md")
    alice = await _online(new_client, alice_account)
    bob = await _online(new_client, bob_account)
    pushed = _collect(bob)

    # The emoji is two UTF-16 units, so later offsets count units, not characters.
    text = "\N{WAVING HAND SIGN} **bold** and `code`"
    sent = await alice.send_message("bob_md", text, parse_mode="md")
    expected = [(types.MessageEntityBold, 3, 4), (types.MessageEntityCode, 12, 4)]

    def shape(message: custom.Message) -> list[tuple[type, int, int]]:
        return [(type(e), e.offset, e.length) for e in message.entities or []]

    assert shape(sent) == expected
    [mine] = await alice.get_messages("bob_md", ids=[sent.id])
    assert mine.raw_text == "\N{WAVING HAND SIGN} bold and code"
    assert shape(mine) == expected
    [theirs] = await bob.get_messages("alice_md", limit=1)
    assert shape(theirs) == expected
    assert theirs.text == text
    await _wait_for(pushed, 1)
    assert shape(pushed[0]) == expected


async def test_silent_flag_is_kept(new_account: AccountFactory, new_client: ClientFactory) -> None:
    alice_account = await new_account(username="alice_quiet")
    bob_account = await new_account(username="bob_quiet")
    alice = await _online(new_client, alice_account)
    bob = await _online(new_client, bob_account)
    pushed = _collect(bob)

    quiet = await alice.send_message("bob_quiet", "shh", silent=True)
    loud = await alice.send_message("bob_quiet", "hey")
    forwarded = await alice.forward_messages("bob_quiet", quiet.id, "bob_quiet", silent=True)

    mine = await alice.get_messages("bob_quiet", ids=[quiet.id, loud.id, forwarded.id])
    assert [bool(m.silent) for m in mine] == [True, False, True]
    theirs = await bob.get_messages("alice_quiet", limit=3)
    assert [(m.text, bool(m.silent)) for m in theirs] == [
        ("shh", True),
        ("hey", False),
        ("shh", True),
    ]
    await _wait_for(pushed, 3)
    assert [bool(m.silent) for m in pushed] == [True, False, True]


async def test_entities_are_clipped_and_mentions_resolved(
    new_account: AccountFactory, new_client: ClientFactory
) -> None:
    alice_account = await new_account(username="alice_ent")
    bob_account = await new_account(username="bob_ent")
    alice = await _online(new_client, alice_account)
    bob_id = bob_account["user_id"]
    peer = await alice.get_input_entity("bob_ent")  # a mention needs a known user

    mention = await alice.send_message("bob_ent", f"hi [Bob](tg://user?id={bob_id})")
    [stored] = await alice.get_messages("bob_ent", ids=[mention.id])
    [entity] = stored.entities
    assert isinstance(entity, types.MessageEntityMentionName)
    assert (entity.offset, entity.length, entity.user_id) == (3, 3, bob_id)

    await alice(
        functions.messages.SendMessageRequest(
            peer,
            "short",
            entities=[
                types.MessageEntityItalic(offset=9, length=2),
                types.MessageEntityBold(offset=1, length=50),
                types.MessageEntityCode(offset=0, length=0),
            ],
        )
    )
    [clipped] = await alice.get_messages("bob_ent", limit=1)
    assert [(type(e), e.offset, e.length) for e in clipped.entities] == [
        (types.MessageEntityBold, 1, 4)
    ]
