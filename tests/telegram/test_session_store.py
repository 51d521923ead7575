"""The session's entity store: bounded per account, looked up without scans."""

from __future__ import annotations

import uuid

import httpx
from telethon.tl import types

from services.sandbox.admin_client import SandboxAdmin
from services.sandbox.server import Sandbox
from services.worker.telegram import accounts
from services.worker.telegram.session import BoundedSession
from tests.telegram.conftest import close_runtime, import_account, open_runtime


def _user(user_id: int, username: str | None = None, phone: str | None = None) -> types.User:
    return types.User(
        id=user_id, access_hash=user_id * 7, username=username, phone=phone, first_name="U"
    )


def test_the_least_recently_seen_entities_go_first() -> None:
    store = BoundedSession(limit=3)
    store.process_entities([_user(1, "one"), _user(2, phone="15550001"), _user(3)])
    assert store.get_entity_rows_by_id(1) == (1, 7)  # used: now the most recent
    store.process_entities([_user(4)])
    assert len(store) == 3
    assert store.get_entity_rows_by_id(2) is None  # the least recently seen went
    assert store.get_entity_rows_by_phone("15550001") is None
    assert store.get_entity_rows_by_username("one") == (1, 7)
    assert store.get_entity_rows_by_id(1, exact=False) == (1, 7)
    assert store.get_entity_rows_by_name("U") == (1, 7)  # the most recently used of that name


def test_a_changed_username_points_at_its_new_owner_only() -> None:
    store = BoundedSession(limit=10)
    store.process_entities([_user(1, "alice")])
    store.process_entities([_user(1, "alice_new"), _user(2, "alice")])
    assert store.get_entity_rows_by_username("alice_new") == (1, 7)
    assert store.get_entity_rows_by_username("alice") == (2, 14)
    store.process_entities([_user(2, None)])
    assert store.get_entity_rows_by_username("alice") is None


async def test_a_member_list_larger_than_the_bound_leaves_the_store_bounded(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox
) -> None:
    imported, created = await import_account(api, admin)
    owner = await admin.create_account(first_name="Owner")
    members = [(await admin.create_account(first_name=f"M{i}"))["user_id"] for i in range(150)]
    await admin.create_chat(
        title="Crowd",
        kind="supergroup",
        creator_id=owner["user_id"],
        username="crowd_sb",
        members=[created["user_id"], *members],
    )
    rt = await open_runtime(sandbox, "store", telegram_entities_per_account=100)
    try:
        account = await accounts.load(rt.db, uuid.UUID(imported["id"]))
        assert account is not None
        async with rt.pool.lease(account) as client:
            seen = await client.get_participants("@crowd_sb")
            assert len(seen) == 152
            assert isinstance(client.session, BoundedSession)
            assert len(client.session) == 100
            latest = seen[-1]  # the most recently seen are still known by id
            peer = await client.get_input_entity(latest.id)
            assert peer.user_id == latest.id
    finally:
        await close_runtime(rt)


async def test_listing_more_dialogs_than_the_bound_leaves_the_clients_map_bounded(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox
) -> None:
    imported, created = await import_account(api, admin)
    for i in range(103):
        writer = await admin.create_account(first_name=f"W{i}")
        await admin.post_message(writer["user_id"], created["user_id"], f"hello {i}")
    rt = await open_runtime(sandbox, "dialogs", telegram_entities_per_account=100)
    try:
        account = await accounts.load(rt.db, uuid.UUID(imported["id"]))
        assert account is not None
        async with rt.pool.lease(account) as client:
            dialogs = await client.get_dialogs()
            assert len(dialogs) == 103
            assert len(client._mb_entity_cache) == 100
            assert client._mb_entity_cache.get(created["user_id"]) is not None  # itself stays
            newest = dialogs[0].entity  # a dialog carries its own input peer
            await client.send_message(dialogs[0], "back")
    finally:
        await close_runtime(rt)
    assert [m["text"] for m in await admin.messages(newest.id, created["user_id"])][-1] == "back"
