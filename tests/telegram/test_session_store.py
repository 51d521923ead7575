"""The session's entity store: bounded per account, looked up without scans."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from telethon.tl import types

from services.sandbox.admin_client import SandboxAdmin
from services.sandbox.server import Sandbox
from services.worker.context import JobContext
from services.worker.tasks import logout as logout_tasks
from services.worker.tasks import telegram as telegram_tasks
from services.worker.telegram import accounts
from services.worker.telegram.runtime import TelegramRuntime
from services.worker.telegram.session import BoundedSession
from shared.errors import PermanentFailure
from shared.jobs.accounts import AccountIdParams
from shared.jobs.envelope import Envelope, utcnow
from shared.jobs.telegram import PeerParams
from tests.helpers import auth, eventually, wait_for_status
from tests.telegram.conftest import (
    close_runtime,
    crowd,
    import_account,
    marked_id,
    open_runtime,
)
from tests.telegram.test_jobs import deferred_as, run, submit


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
    await crowd(admin, created, 150)
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


def test_a_new_store_takes_over_what_the_last_one_had_seen() -> None:
    old = BoundedSession(limit=3)
    old.process_entities([_user(1, "one"), _user(2, phone="15550002"), _user(3)])
    new = BoundedSession(limit=3)
    new.process_entities([_user(4)])
    new.adopt(old.rows())  # older than what the new store saw itself: first to go
    assert len(new) == 3
    assert new.get_entity_rows_by_id(4) == (4, 28)
    assert new.get_entity_rows_by_id(1) is None
    assert new.get_entity_rows_by_phone("15550002") == (2, 14)


async def test_numeric_ids_still_work_after_the_client_is_dropped(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    account, created = await import_account(api, admin)
    carol = await admin.create_account(username="carol_sb", first_name="Carol")
    await run(api, "telegram.resolve", account_id=account["id"], peer="@carol_sb")
    dropped = await api.delete(f"/v1/telegram/connections/{account['id']}", headers=auth())
    assert dropped.status_code == 202, dropped.text

    async def disconnected() -> bool:
        path = f"/v1/telegram/connections/{account['id']}"
        return (await api.get(path, headers=auth())).json()["connected"] is False

    await eventually(disconnected)
    sent = await run(
        api,
        "telegram.send_message",
        account_id=account["id"],
        peer=str(carol["user_id"]),
        text="hi",
    )
    assert sent["status"] == "succeeded", sent
    assert [m["text"] for m in await admin.messages(carol["user_id"], created["user_id"])] == ["hi"]


async def club_of(admin: SandboxAdmin, member: int) -> dict[str, Any]:
    """A supergroup with no username that ``member`` is in, its one post "welcome"."""
    owner = await admin.create_account(first_name="Owner")
    return await admin.create_chat(
        title="Club",
        kind="supergroup",
        creator_id=owner["user_id"],
        members=[member],
        messages=[{"text": "welcome"}],
    )


async def test_a_numeric_id_never_seen_here_is_found_among_the_accounts_chats(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    account, created = await import_account(api, admin)
    chat = await club_of(admin, created["user_id"])
    marked = f"-100{chat['chat_id']}"  # no username, never resolved by this worker
    history = await run(api, "telegram.get_history", account_id=account["id"], peer=marked)
    assert history["status"] == "succeeded", history
    assert [m["text"] for m in history["result"]["messages"]][:1] == ["welcome"]
    stranger = await admin.create_account(first_name="Stranger")  # in no chat of ours
    missing = await run(
        api, "telegram.get_history", account_id=account["id"], peer=str(stranger["user_id"])
    )
    assert missing["status"] == "failed"
    assert missing["error"]["code"] == "peer_not_found"


async def test_a_chats_read_that_did_not_happen_does_not_count_as_done(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    """A flood wait on reading the account's chats defers the job; its re-run reads them
    then, rather than failing as if they had been read and held no such id."""
    account, created = await import_account(api, admin)
    chat = await club_of(admin, created["user_id"])
    await admin.add_fault(
        created["user_id"], "flood_wait", method="messages.getDialogs", seconds=5, times=1
    )
    job_id = await submit(
        api, "telegram.get_history", account_id=account["id"], peer=f"-100{chat['chat_id']}"
    )
    await deferred_as(api, job_id, "flood_wait")
    history = await wait_for_status(api, job_id, {"succeeded", "failed"}, timeout=20)
    assert history["status"] == "succeeded", history
    assert [m["text"] for m in history["result"]["messages"]][:1] == ["welcome"]


def _job(rt: TelegramRuntime, job_type: str, params: dict[str, Any]) -> JobContext:
    """A job's context on ``rt`` (only what Telegram tasks read of the worker's state)."""
    now = utcnow()
    envelope = Envelope(
        id=str(uuid.uuid4()),
        type=job_type,
        tenant="acme",
        params=params,
        timeout=60,
        created_at=now,
        run_at=now,
    )
    state: Any = SimpleNamespace(telegram=rt, db=rt.db, settings=rt.settings)
    return JobContext(state, envelope, 1)


async def test_what_an_account_had_seen_goes_with_its_logout(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox
) -> None:
    """Entities and phones a logged-out account's clients saw are not kept for a later
    client: neither when a job still held the client at the logout (dropped after it),
    nor when the client had been dropped before."""
    busy, _ = await import_account(api, admin)
    idle, idle_created = await import_account(api, admin)
    await admin.create_account(username="carol_sb", phone="+15550001144", first_name="Carol")
    rt = await open_runtime(sandbox, "logout-forgets")
    try:
        for account in (busy, idle):
            params = {"account_id": account["id"], "peer": "+15550001144"}
            found = await telegram_tasks.resolve(
                _job(rt, "telegram.resolve", params), PeerParams.model_validate(params)
            )
            assert found.peer.username == "carol_sb"
        # The idle account's session is revoked: disabled, its client dropped.
        await admin.add_fault(idle_created["user_id"], "revoke")
        params = {"account_id": idle["id"], "peer": "@carol_sb"}
        with pytest.raises(PermanentFailure):
            await telegram_tasks.resolve(
                _job(rt, "telegram.resolve", params), PeerParams.model_validate(params)
            )
        assert not rt.pool.holds(uuid.UUID(idle["id"]))
        # The busy one's client is held by a job through its logout.
        loaded = await accounts.load(rt.db, uuid.UUID(busy["id"]))
        assert loaded is not None
        async with rt.pool.lease(loaded):
            params = {"account_id": busy["id"]}
            await logout_tasks.logout(
                _job(rt, "account.logout", params), AccountIdParams.model_validate(params)
            )
        params = {"account_id": idle["id"]}
        await logout_tasks.logout(
            _job(rt, "account.logout", params), AccountIdParams.model_validate(params)
        )
        left = {
            name: (
                rt.pool.holds(uuid.UUID(account["id"])),
                uuid.UUID(account["id"]) in rt.pool._kept_entities,
                [key for key in rt.phone_peers if key[0] == uuid.UUID(account["id"])],
            )
            for name, account in (("busy", busy), ("idle", idle))
        }
        assert left == {"busy": (False, False, []), "idle": (False, False, [])}
    finally:
        await close_runtime(rt)


async def test_resolving_a_numeric_id_never_seen_here_looks_among_the_accounts_chats(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    account, created = await import_account(api, admin)
    owner = await admin.create_account(first_name="Owner")
    chat = await admin.create_chat(
        title="Club", kind="supergroup", creator_id=owner["user_id"], members=[created["user_id"]]
    )
    resolved = await run(
        api, "telegram.resolve", account_id=account["id"], peer=f"-100{chat['chat_id']}"
    )
    assert resolved["status"] == "succeeded", resolved
    assert resolved["result"]["peer"] == {
        "id": marked_id(chat),
        "kind": "supergroup",
        "username": None,
        "title": "Club",
    }
