"""Injected faults as the real client experiences them."""

import time

import httpx
import pytest
from telethon import errors
from telethon.errors import AuthKeyNotFound
from telethon.tl import functions

from services.sandbox.client import auth_key_id, sandbox_session
from services.sandbox.server import Sandbox

from .conftest import AccountFactory, ClientFactory, eventually


async def _fault(admin: httpx.AsyncClient, **body: object) -> int:
    response = await admin.post("/admin/faults", json=body)
    assert response.status_code == 201, response.text
    fault_id: int = response.json()["id"]
    return fault_id


async def test_flood_wait_n_times_then_clears(
    admin: httpx.AsyncClient, new_account: AccountFactory, new_client: ClientFactory
) -> None:
    alice = await new_account()
    client = new_client(alice["session_string"])
    await client.connect()
    await _fault(
        admin,
        user_id=alice["user_id"],
        method="messages.getHistory",
        kind="flood_wait",
        seconds=2,
        times=1,
    )
    with pytest.raises(errors.FloodWaitError) as caught:
        await client.get_messages("me", limit=1)
    assert caught.value.seconds == 2
    # Other methods of the account are unaffected; the single use is spent.
    assert (await client.send_message("me", "still flowing")).id == 1
    client._flood_waited_requests.clear()  # forget the client-side cache
    assert len(await client.get_messages("me", limit=1)) == 1


async def test_flood_wait_period_reports_remaining_seconds(
    admin: httpx.AsyncClient, new_account: AccountFactory, new_client: ClientFactory
) -> None:
    alice = await new_account()
    client = new_client(alice["session_string"])
    await client.connect()
    await _fault(admin, user_id=alice["user_id"], kind="flood_wait", seconds=30)
    with pytest.raises(errors.FloodWaitError) as caught:
        await client.send_message("me", "x")
    assert 28 <= caught.value.seconds <= 30
    with pytest.raises(errors.FloodWaitError):
        await client(functions.updates.GetStateRequest())
    listed = (await admin.get("/admin/faults")).json()["faults"]
    assert listed[0]["fired"] == 2
    assert listed[0]["until"] is not None


async def test_slowmode_wait(
    admin: httpx.AsyncClient, new_account: AccountFactory, new_client: ClientFactory
) -> None:
    alice = await new_account()
    client = new_client(alice["session_string"])
    await client.connect()
    await _fault(
        admin, user_id=alice["user_id"], method="messages.sendMessage", kind="slowmode_wait",
        seconds=7, times=1,
    )  # fmt: skip
    with pytest.raises(errors.SlowModeWaitError) as caught:
        await client.send_message("me", "x")
    assert caught.value.seconds == 7


@pytest.mark.parametrize("kind", ["drop_before", "drop_after"])
async def test_dropped_connection_resend_is_stored_once(
    admin: httpx.AsyncClient,
    sandbox: Sandbox,
    new_account: AccountFactory,
    new_client: ClientFactory,
    kind: str,
) -> None:
    alice = await new_account()
    client = new_client(alice["session_string"])
    await client.connect()
    await _fault(admin, user_id=alice["user_id"], method="messages.sendMessage", kind=kind)
    message = await client.send_message("me", "exactly once")
    stored = (await admin.get("/admin/messages", params={"user_id": alice["user_id"]})).json()
    texts = [m for m in stored["messages"] if m["text"] == "exactly once"]
    assert len(texts) == 1
    assert texts[0]["id"] == message.id
    closed = [r for r in sandbox.core.ledger.records() if r.close_reason == "fault"]
    assert len(closed) == 1
    assert sandbox.core.ledger.overlaps() == []


async def test_random_id_dedupe_answers_the_original(
    new_account: AccountFactory, new_client: ClientFactory, admin: httpx.AsyncClient
) -> None:
    alice = await new_account()
    bob = await new_account(username="bob_dedupe")
    client = new_client(alice["session_string"])
    await client.connect()
    peer = await client.get_input_entity("bob_dedupe")
    request = functions.messages.SendMessageRequest(peer, "once", random_id=424242)
    first = await client(request)
    second = await client(functions.messages.SendMessageRequest(peer, "once", random_id=424242))
    assert (second.id, second.pts) == (first.id, first.pts)
    stored = (await admin.get("/admin/messages", params={"user_id": bob["user_id"]})).json()
    assert len(stored["messages"]) == 1


async def test_delay_holds_the_answer(
    admin: httpx.AsyncClient, new_account: AccountFactory, new_client: ClientFactory
) -> None:
    alice = await new_account()
    client = new_client(alice["session_string"])
    await client.connect()
    await _fault(
        admin, user_id=alice["user_id"], method="messages.sendMessage", kind="delay",
        seconds=0.3, times=1,
    )  # fmt: skip
    started = time.monotonic()
    await client.send_message("me", "late")
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    await client.send_message("me", "prompt")
    assert time.monotonic() - started < 0.3


async def test_revoked_key_raises_auth_key_unregistered(
    admin: httpx.AsyncClient, new_account: AccountFactory, new_client: ClientFactory
) -> None:
    alice = await new_account()
    client = new_client(alice["session_string"])
    await client.connect()
    await client.send_message("me", "before")
    await _fault(admin, user_id=alice["user_id"], kind="revoke")
    with pytest.raises(errors.AuthKeyUnregisteredError):
        await client.send_message("me", "after")


async def test_banned_user(
    admin: httpx.AsyncClient, new_account: AccountFactory, new_client: ClientFactory
) -> None:
    alice = await new_account()
    client = new_client(alice["session_string"])
    await client.connect()
    fault_id = await _fault(admin, user_id=alice["user_id"], kind="ban")
    with pytest.raises(errors.UserDeactivatedBanError):
        await client.send_message("me", "x")
    assert (await admin.delete(f"/admin/faults/{fault_id}")).status_code == 200
    assert (await client.send_message("me", "unbanned")).text == "unbanned"


async def test_unknown_auth_key_is_transport_404(
    sandbox: Sandbox, new_client: ClientFactory
) -> None:
    client = new_client(sandbox_session(2, "127.0.0.1", sandbox.mtproto_port, bytes(range(256))))
    with pytest.raises(AuthKeyNotFound):
        await client.connect()


async def test_two_clients_on_one_key_show_in_ledger(
    admin: httpx.AsyncClient, new_account: AccountFactory, new_client: ClientFactory
) -> None:
    alice = await new_account()
    first = new_client(alice["session_string"])
    second = new_client(alice["session_string"])
    await first.connect()
    await second.connect()
    await second.disconnect()

    async def reported() -> bool:
        data = (await admin.get("/admin/ledger/overlaps")).json()["overlaps"]
        return len(data) == 1 and data[0]["end"] is not None

    await eventually(reported)
    overlap = (await admin.get("/admin/ledger/overlaps")).json()["overlaps"][0]
    assert overlap["auth_key_id"] == auth_key_id(alice["session_string"])
    assert len(overlap["connections"]) == 2
    assert overlap["start"] < overlap["end"]


async def test_rapid_handoffs_are_not_overlaps(
    admin: httpx.AsyncClient, new_account: AccountFactory, new_client: ClientFactory
) -> None:
    alice = await new_account()
    owner = new_client(alice["session_string"])
    await owner.connect()
    for i in range(10):
        # Busy up to the last moment, then hand the key to a new client at once.
        await owner.send_message("me", f"turn {i}")
        await owner.disconnect()
        owner = new_client(alice["session_string"])
        await owner.connect()
    connections = (await admin.get("/admin/ledger")).json()["connections"]
    assert len(connections) == 11
    assert all(c["closed"] is not None for c in connections[:-1])
    assert (await admin.get("/admin/ledger/overlaps")).json()["overlaps"] == []


async def test_auth_key_duplicated_when_enabled(
    admin: httpx.AsyncClient, new_account: AccountFactory, new_client: ClientFactory
) -> None:
    alice = await new_account()
    response = await admin.post("/admin/config", json={"auth_key_duplicated": True})
    assert response.json() == {
        "auth_key_duplicated": True,
        "random_id_duplicate": False,
        "participants_listed": 10_000,
        "sign_up_unknown": True,
    }
    first = new_client(alice["session_string"])
    await first.connect()
    second = new_client(alice["session_string"])
    with pytest.raises(errors.AuthKeyDuplicatedError):
        await second.connect()
    # As on Telegram, the key is dead for everyone once it was duplicated.
    with pytest.raises(errors.AuthKeyDuplicatedError):
        await first.send_message("me", "x")
