"""The stock Telethon client against the sandbox: keys, login, messaging, transports."""

import httpx
import pytest
from telethon import errors
from telethon.network import (
    ConnectionTcpAbridged,
    ConnectionTcpFull,
    ConnectionTcpIntermediate,
    ConnectionTcpObfuscated,
)
from telethon.tl import functions

from services.sandbox.client import auth_key_id, sandbox_session
from services.sandbox.server import Sandbox

from .conftest import AccountFactory, ClientFactory


async def test_fresh_key_exchange_then_unauthorized(
    sandbox: Sandbox, new_client: ClientFactory
) -> None:
    client = new_client(sandbox_session(2, "127.0.0.1", sandbox.mtproto_port))
    await client.connect()
    key = client.session.auth_key
    assert key is not None
    assert len(key.key) in (255, 256)
    assert sandbox.core.keys.get(key.key_id) is not None
    assert not await client.is_user_authorized()
    assert await client.get_me() is None


async def test_login_with_phone_and_code(sandbox: Sandbox, new_client: ClientFactory) -> None:
    client = new_client(sandbox_session(2, "127.0.0.1", sandbox.mtproto_port))
    await client.connect()
    sent = await client.send_code_request("+1 555 000 1234")
    assert sent.phone_code_hash
    with pytest.raises(errors.PhoneCodeInvalidError):
        await client.sign_in("+15550001234", "11111")
    me = await client.sign_in("+15550001234", "22222")
    assert me.phone == "15550001234"
    assert (await client.get_me()).id == me.id
    await client.log_out()
    assert sandbox.core.keys.for_user(me.id) == []


async def test_login_with_two_factor_password(
    sandbox: Sandbox, new_account: AccountFactory, new_client: ClientFactory
) -> None:
    account = await new_account(phone="+4915112345678", password="hunter2", authorized=False)
    assert account["session_string"] is None
    client = new_client(sandbox_session(2, "127.0.0.1", sandbox.mtproto_port))
    await client.connect()
    await client.send_code_request(account["phone"])
    with pytest.raises(errors.SessionPasswordNeededError):
        await client.sign_in(account["phone"], "22222")
    with pytest.raises(errors.PasswordHashInvalidError):
        await client.sign_in(password="wrong")
    me = await client.sign_in(password="hunter2")
    assert me.id == account["user_id"]
    assert await client.is_user_authorized()


async def test_get_me_send_and_read_back(
    admin: httpx.AsyncClient, new_account: AccountFactory, new_client: ClientFactory
) -> None:
    alice = await new_account(username="alice_sb", first_name="Alice")
    bob = await new_account(username="bob_sb")
    client = new_client(alice["session_string"])
    await client.connect()
    me = await client.get_me()
    assert (me.id, me.username, me.first_name) == (alice["user_id"], "alice_sb", "Alice")

    sent = await client.send_message("bob_sb", "hello bob")
    again = await client.send_message("bob_sb", "second")
    assert again.id == sent.id + 1
    history = await client.get_messages("bob_sb", limit=10)
    assert [m.text for m in history] == ["second", "hello bob"]
    assert all(m.out for m in history)
    assert history.total == 2

    stored = (await admin.get("/admin/messages", params={"user_id": bob["user_id"]})).json()
    assert [(m["text"], m["out"], m["peer"]) for m in stored["messages"]] == [
        ("hello bob", False, alice["user_id"]),
        ("second", False, alice["user_id"]),
    ]


async def test_resolve_username_and_unknown_username(
    new_account: AccountFactory, new_client: ClientFactory
) -> None:
    alice = await new_account()
    carol = await new_account(username="carol_sb", first_name="Carol")
    client = new_client(alice["session_string"])
    await client.connect()
    entity = await client.get_entity("@carol_sb")
    assert (entity.id, entity.access_hash) == (carol["user_id"], carol["access_hash"])
    with pytest.raises(ValueError, match="nobody_here") as caught:
        await client.get_entity("nobody_here")
    assert isinstance(caught.value.__cause__, errors.UsernameNotOccupiedError)


async def test_iter_dialogs_pages_across_peers(
    new_account: AccountFactory, new_client: ClientFactory
) -> None:
    alice = await new_account()
    peers = [await new_account(username=f"peer_{i}_sb") for i in range(5)]
    client = new_client(alice["session_string"])
    await client.connect()
    for i, peer in enumerate(peers):
        await client.send_message(peer["username"], f"msg {i}")
    names = [d.entity.username async for d in client.iter_dialogs(limit=None)]
    assert sorted(names) == sorted(p["username"] for p in peers)
    small_pages = [d.id async for d in client.iter_dialogs(limit=5, ignore_pinned=True)]
    assert len(small_pages) == 5


@pytest.mark.parametrize(
    "connection",
    [ConnectionTcpFull, ConnectionTcpAbridged, ConnectionTcpIntermediate, ConnectionTcpObfuscated],
)
async def test_every_transport(
    sandbox: Sandbox, new_account: AccountFactory, new_client: ClientFactory, connection: type
) -> None:
    alice = await new_account()
    client = new_client(alice["session_string"], connection=connection)
    await client.connect()
    message = await client.send_message("me", "x" * 3000)  # > 508 bytes: long frames
    assert (await client.get_messages("me", ids=message.id)).text == "x" * 3000
    ledger = sandbox.core.ledger.records()
    expected = connection.packet_codec.__name__.removesuffix("PacketCodec").lower()
    transports = {r.transport for r in ledger if r.auth_key_id is not None}
    assert any(t and t.endswith(expected) for t in transports)
    assert auth_key_id(alice["session_string"]) in {r.as_dict()["auth_key_id"] for r in ledger}


async def test_resolve_phone_and_nearest_dc(
    new_account: AccountFactory, new_client: ClientFactory
) -> None:
    alice = await new_account()
    dave = await new_account(phone="+44 7700 900123", first_name="Dave")
    client = new_client(alice["session_string"])
    await client.connect()
    resolved = await client(functions.contacts.ResolvePhoneRequest("447700900123"))
    assert resolved.users[0].id == dave["user_id"]
    with pytest.raises(errors.PhoneNotOccupiedError):
        await client(functions.contacts.ResolvePhoneRequest("447700900999"))
    nearest = await client(functions.help.GetNearestDcRequest())
    assert (nearest.this_dc, nearest.nearest_dc) == (2, 2)
