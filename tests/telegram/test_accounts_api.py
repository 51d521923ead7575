"""Importing sessions: validated, sealed at rest, never shown again."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from telethon.sessions import StringSession

from services.sandbox.admin_client import SandboxAdmin
from services.sandbox.client import auth_key_id, sandbox_session
from services.sandbox.server import Sandbox
from services.worker.telegram.vault import Vault, vault_from_settings
from shared.config import WorkerSettings
from tests.helpers import auth, eventually, wait_for_status
from tests.telegram.conftest import another_session, import_account, insert_sealed, signed_in
from tests.telegram.test_jobs import run


async def test_import_validates_and_stores_the_session_sealed(
    api: httpx.AsyncClient,
    admin: SandboxAdmin,
    pg: asyncpg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    account, created = await import_account(api, admin, username="alice_sb", first_name="Alice")
    assert account["state"] == "active"
    assert account["tg_user_id"] == created["user_id"]
    assert account["username"] == "alice_sb"
    session = created["session_string"]
    row = await pg.fetchrow(
        "SELECT session_ciphertext, session_key_id FROM accounts WHERE id = $1",
        uuid.UUID(account["id"]),
    )
    assert row["session_key_id"] == "dev"
    assert session.encode() not in bytes(row["session_ciphertext"])
    listed = (await api.get("/v1/accounts", headers=auth())).json()["items"]
    assert [a["id"] for a in listed] == [account["id"]]
    events = await pg.fetch(
        "SELECT kind FROM account_events WHERE account_id = $1", uuid.UUID(account["id"])
    )
    assert [e["kind"] for e in events] == ["imported"]
    # The session never appears in responses, job records or logs.
    jobs = (await api.get("/v1/jobs", headers=auth())).text
    assert session not in jobs
    assert session not in str(
        (await api.get(f"/v1/accounts/{account['id']}", headers=auth())).json()
    )
    assert session not in caplog.text


async def test_importing_garbage_is_422(api: httpx.AsyncClient) -> None:
    for garbage in ("not a session at all", "1" + "A" * 60):
        response = await api.post(
            "/v1/accounts/import", json={"session_string": garbage}, headers=auth()
        )
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "invalid_session"


async def test_a_session_the_dc_does_not_know_is_refused(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    created = await admin.create_account()
    await admin.add_fault(created["user_id"], "revoke")
    response = await api.post(
        "/v1/accounts/import",
        json={"session_string": created["session_string"]},
        headers=auth(),
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "session_invalid"


async def test_a_flood_wait_on_import_answers_429_with_retry_after_not_session_invalid(
    api: httpx.AsyncClient, admin: SandboxAdmin, pg: asyncpg.Connection[Any]
) -> None:
    """A flood says nothing about the session: the caller must not throw it away."""
    created = await admin.create_account()
    await admin.add_fault(
        created["user_id"], "flood_wait", method="users.getUsers", seconds=120, times=1
    )
    body = {"session_string": created["session_string"]}
    flooded = await api.post("/v1/accounts/import", json=body, headers=auth())
    assert flooded.status_code == 429, flooded.text
    error = flooded.json()["error"]
    assert error["code"] == "flood_wait"
    assert error["details"]["retry_after"] == 120
    assert flooded.headers["Retry-After"] == "120"
    assert await pg.fetchval("SELECT count(*) FROM accounts") == 0
    # After the wait (one flood here), the same session is imported.
    again = await api.post("/v1/accounts/import", json=body, headers=auth())
    assert again.status_code == 201, again.text
    assert again.json()["tg_user_id"] == created["user_id"]


async def test_the_address_inside_a_session_is_never_connected(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox
) -> None:
    knocks: list[int] = []

    async def knocked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        knocks.append(1)
        writer.close()

    listener = await asyncio.start_server(knocked, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]

    async def imported(session: str) -> httpx.Response:
        body = {"session_string": session}
        return await api.post("/v1/accounts/import", json=body, headers=auth())

    try:
        key = os.urandom(256)
        elsewhere = await imported(sandbox_session(2, "127.0.0.1", port, key).save())
        at_the_dc = await imported(
            sandbox_session(2, "127.0.0.1", sandbox.mtproto_port, key).save()
        )
        # A real session naming the wrong address is still connected at its DC.
        created = await admin.create_account()
        real_key = StringSession(created["session_string"]).auth_key
        moved = sandbox_session(2, "127.0.0.1", port, real_key.key if real_key else None)
        real = await imported(moved.save())
        unknown_dc = await imported(sandbox_session(9, "127.0.0.1", port, key).save())
    finally:
        listener.close()
        await listener.wait_closed()
    assert knocks == []
    answers = [(r.status_code, r.json()["error"]["code"]) for r in (elsewhere, at_the_dc)]
    assert answers == [(422, "session_invalid")] * 2
    assert real.status_code == 201, real.text
    assert unknown_dc.status_code == 422
    assert unknown_dc.json()["error"]["code"] == "invalid_session"
    job = await api.post(
        "/v1/jobs",
        json={"type": "telegram.get_me", "params": {"account_id": real.json()["id"]}},
        headers=auth(),
    )
    done = await wait_for_status(api, job.json()["id"], {"succeeded"})
    assert done["result"]["id"] == created["user_id"]
    assert knocks == []


async def test_accounts_are_tenant_scoped(api: httpx.AsyncClient, admin: SandboxAdmin) -> None:
    account, _ = await import_account(api, admin)
    other = await api.get(f"/v1/accounts/{account['id']}", headers=auth("globex"))
    assert other.status_code == 404
    assert (await api.get("/v1/accounts", headers=auth("globex"))).json()["items"] == []
    job = await api.post(
        "/v1/jobs",
        json={"type": "telegram.get_me", "params": {"account_id": account["id"]}},
        headers=auth("globex"),
    )
    assert job.status_code == 404
    assert job.json()["error"]["code"] == "account_not_found"


async def test_reimporting_a_held_session_answers_the_account_without_connecting(
    api: httpx.AsyncClient, admin: SandboxAdmin, pg: asyncpg.Connection[Any]
) -> None:
    """One owner per key: the importer never opens a second connection to a held key."""
    first, created = await import_account(api, admin)
    key = auth_key_id(created["session_string"])
    before = [r for r in await admin.ledger() if r["auth_key_id"] == key]
    again = await api.post(
        "/v1/accounts/import", json={"session_string": created["session_string"]}, headers=auth()
    )
    assert again.status_code == 201
    assert again.json()["id"] == first["id"]
    assert await pg.fetchval("SELECT count(*) FROM accounts") == 1
    assert [r for r in await admin.ledger() if r["auth_key_id"] == key] == before
    other = await api.post(
        "/v1/accounts/import",
        json={"session_string": created["session_string"]},
        headers=auth("globex"),
    )
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "session_in_use"
    assert await pg.fetchval("SELECT count(*) FROM accounts") == 1


async def test_a_new_session_of_a_known_user_is_sealed_for_its_existing_account(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox, pg: asyncpg.Connection[Any]
) -> None:
    first, created = await import_account(api, admin, phone="+15550009876")
    second_session = await another_session(sandbox, "+15550009876")
    assert auth_key_id(second_session) != auth_key_id(created["session_string"])
    again = await api.post(
        "/v1/accounts/import", json={"session_string": second_session}, headers=auth()
    )
    assert again.status_code == 201
    assert again.json()["id"] == first["id"]
    assert await pg.fetchval("SELECT count(*) FROM accounts") == 1
    me = await api.post(
        "/v1/jobs",
        json={"type": "telegram.get_me", "params": {"account_id": first["id"]}},
        headers=auth(),
    )
    job = await wait_for_status(api, me.json()["id"], {"succeeded", "failed"}, timeout=15)
    assert job["status"] == "succeeded", job


async def test_phones_are_spelled_alike_and_renewing_an_account_refreshes_its_user(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox, pg: asyncpg.Connection[Any]
) -> None:
    """Logged in or imported, an account's phone is E.164 with its '+'; an import or a
    login renewing the account keeps what Telegram says of the user now (a new name, a
    username given up), not what it said when the account was made."""
    started = await api.post("/v1/accounts", json={"phone": "+15550001212"}, headers=auth())
    logged_in = started.json()["account_id"]
    done = await api.post(
        f"/v1/accounts/{logged_in}/login/code", json={"code": "22222"}, headers=auth()
    )
    assert done.status_code == 200, done.text
    imported, created = await import_account(
        api, admin, phone="+15550001313", username="old_name", first_name="Old"
    )
    await pg.execute("UPDATE accounts SET dc_id = NULL WHERE id = $1", uuid.UUID(imported["id"]))
    phones = {
        a["id"]: a["phone"] for a in (await api.get("/v1/accounts", headers=auth())).json()["items"]
    }
    assert phones == {logged_in: "+15550001212", imported["id"]: "+15550001313"}
    user = sandbox.core.world.accounts[created["user_id"]]
    user.first_name, user.username = "New", None  # since renamed, the username given up
    renewed = await api.post(
        "/v1/accounts/import",
        json={"session_string": await another_session(sandbox, "+15550001313")},
        headers=auth(),
    )
    assert renewed.json()["id"] == imported["id"], renewed.text
    view = {k: renewed.json()[k] for k in ("phone", "username", "first_name", "dc_id")}
    assert view == {"phone": "+15550001313", "username": None, "first_name": "New", "dc_id": 2}
    user.first_name = "Newer"
    again = await api.post("/v1/accounts", json={"phone": "+15550001313"}, headers=auth())
    merged = await api.post(
        f"/v1/accounts/{again.json()['account_id']}/login/code",
        json={"code": "22222"},
        headers=auth(),
    )
    assert merged.json()["account_id"] == imported["id"], merged.text
    view = (await api.get(f"/v1/accounts/{imported['id']}", headers=auth())).json()
    assert (view["first_name"], view["phone"]) == ("Newer", "+15550001313")


async def test_importing_a_session_that_replaces_a_connected_one_logs_the_old_key_out(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox, pg: asyncpg.Connection[Any]
) -> None:
    """The account's worker drops its client of the old key and logs that key out, so no
    other tenant can adopt a key still connected for this account."""
    first, created = await import_account(api, admin, phone="+15550009878")
    old = created["session_string"]
    held = await run(api, "telegram.get_me", account_id=first["id"])  # the old key connected
    assert held["status"] == "succeeded", held
    second_session = await another_session(sandbox, "+15550009878")
    again = await api.post(
        "/v1/accounts/import", json={"session_string": second_session}, headers=auth()
    )
    assert again.json()["id"] == first["id"], again.text

    async def old_key_logged_out() -> bool:
        return not signed_in(sandbox, old)

    await eventually(old_key_logged_out)
    elsewhere = await api.post(
        "/v1/accounts/import", json={"session_string": old}, headers=auth("other")
    )
    assert elsewhere.status_code == 422, elsewhere.text
    assert elsewhere.json()["error"]["code"] == "session_invalid"
    await serves_then_logs_out(api, admin, sandbox, first["id"], second_session)


async def serves_then_logs_out(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox, account_id: str, session: str
) -> None:
    """The account's jobs run on its stored ``session``, DELETE logs exactly that one
    out, and no auth key was ever connected twice."""
    me = await run(api, "telegram.get_me", account_id=account_id)
    assert me["status"] == "succeeded", me
    out = await api.delete(f"/v1/accounts/{account_id}", headers=auth())
    assert out.status_code == 200, out.text
    assert not signed_in(sandbox, session)
    assert await admin.overlaps() == []


async def test_sessions_stored_before_fingerprints_are_matched_and_an_unreadable_one_is_passed_over(
    api: httpx.AsyncClient, admin: SandboxAdmin, pg: asyncpg.Connection[Any]
) -> None:
    """Rows from before sessions were fingerprinted get their fingerprint at the first
    import; one this worker cannot open (its vault key is gone) holds up no import."""
    await pg.execute(
        "INSERT INTO tenants (id, name) VALUES ('acme', 'acme') ON CONFLICT DO NOTHING"
    )
    ours = vault_from_settings(None, WorkerSettings().secret_key.get_secret_value())
    gone = Vault.parse(Vault.generate_entry("gone"))
    legacy, lost = uuid.uuid4(), uuid.uuid4()
    held = await admin.create_account()
    await insert_sealed(
        pg, legacy, held["user_id"], ours.seal(held["session_string"], aad=legacy.bytes)
    )
    await insert_sealed(pg, lost, 4242, gone.seal(held["session_string"], aad=lost.bytes))
    fresh = await admin.create_account()
    first = await api.post(
        "/v1/accounts/import", json={"session_string": fresh["session_string"]}, headers=auth()
    )
    assert first.status_code == 201, first.text
    hashes = dict(
        await pg.fetch("SELECT id, auth_key_hash FROM accounts WHERE id = ANY($1)", [legacy, lost])
    )
    assert hashes[legacy]
    assert hashes[lost] is None
    again = await api.post(
        "/v1/accounts/import", json={"session_string": held["session_string"]}, headers=auth()
    )
    assert again.status_code == 201, again.text
    assert again.json()["id"] == str(legacy)  # the stored session's owner, found by fingerprint
