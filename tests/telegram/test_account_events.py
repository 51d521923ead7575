"""Every transition of an account leaves an event row: connects, disconnects, state changes."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import httpx

from services.sandbox.admin_client import SandboxAdmin
from services.sandbox.server import Sandbox
from tests.helpers import auth, eventually
from tests.telegram.conftest import another_session, import_account
from tests.telegram.test_jobs import deferred_as, run, submit


async def test_a_new_session_reactivates_a_disabled_account_cleanly_with_an_event(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox, pg: asyncpg.Connection[Any]
) -> None:
    account, created = await import_account(api, admin, phone="+15550009876")
    account_id = uuid.UUID(account["id"])
    fault = await admin.add_fault(created["user_id"], "revoke")
    failed = await run(api, "telegram.get_me", account_id=account["id"])
    assert failed["status"] == "failed"
    await admin.delete_fault(fault)
    await pg.execute(  # a flood wait over by now
        "UPDATE accounts SET flood_until = now() - interval '1 minute' WHERE id = $1", account_id
    )
    before = await pg.fetchrow("SELECT * FROM accounts WHERE id = $1", account_id)
    assert (before["state"], before["disabled_reason"]) == ("disabled", "revoked")
    assert before["last_error"] is not None

    again = await api.post(
        "/v1/accounts/import",
        json={"session_string": await another_session(sandbox, "+15550009876")},
        headers=auth(),
    )
    assert again.status_code == 201
    assert again.json()["state"] == "active"
    row = await pg.fetchrow("SELECT * FROM accounts WHERE id = $1", account_id)
    assert row["state"] == "active"
    for column in ("disabled_reason", "flood_until", "last_error", "invalid_since"):
        assert row[column] is None, column
    changes = [
        json.loads(r["details"])
        for r in await pg.fetch(
            """SELECT details::text FROM account_events
               WHERE account_id = $1 AND kind = 'state_change'
               ORDER BY id""",
            account_id,
        )
    ]
    assert changes[-1] == {"from": "disabled", "to": "active"}


async def test_a_new_session_keeps_a_flood_wait_still_running(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox, pg: asyncpg.Connection[Any]
) -> None:
    """Telegram keeps a flood wait for the user, not the session: an import or login of
    the account's user while one runs leaves the account in flood_wait until it ends, as
    the jobs it still defers see it, rather than show it active."""
    account, created = await import_account(api, admin, phone="+15550009875")
    await admin.add_fault(
        created["user_id"], "flood_wait", method="users.getUsers", seconds=900, times=1
    )
    await deferred_as(
        api, await submit(api, "telegram.get_me", account_id=account["id"]), "flood_wait"
    )
    url = f"/v1/accounts/{account['id']}"
    flooded = (await api.get(url, headers=auth())).json()
    assert flooded["state"] == "flood_wait"
    fresh = await another_session(sandbox, "+15550009875")
    again = await api.post("/v1/accounts/import", json={"session_string": fresh}, headers=auth())
    assert again.status_code == 201, again.text
    assert (again.json()["state"], again.json()["flood_until"]) == (
        "flood_wait",
        flooded["flood_until"],
    )
    started = await api.post("/v1/accounts", json={"phone": "+15550009875"}, headers=auth())
    done = await api.post(
        f"/v1/accounts/{started.json()['account_id']}/login/code",
        json={"code": "22222"},
        headers=auth(),
    )
    assert (done.json()["account_id"], done.json()["state"]) == (account["id"], "flood_wait")
    assert (await api.get(url, headers=auth())).json()["flood_until"] == flooded["flood_until"]
    await deferred_as(
        api, await submit(api, "telegram.get_me", account_id=account["id"]), "flood_wait"
    )


async def test_a_client_connect_and_its_requested_disconnect_are_account_events(
    api: httpx.AsyncClient, admin: SandboxAdmin, pg: asyncpg.Connection[Any]
) -> None:
    account, _ = await import_account(api, admin)
    account_id = uuid.UUID(account["id"])
    assert (await run(api, "telegram.get_me", account_id=account["id"]))["status"] == "succeeded"
    dropped = await api.delete(f"/v1/telegram/connections/{account['id']}", headers=auth())
    assert dropped.status_code == 202

    async def connection_events() -> list[tuple[str, Any]]:
        rows = await pg.fetch(
            """SELECT kind, details::text FROM account_events
               WHERE account_id = $1 AND kind IN ('connect', 'disconnect') ORDER BY id""",
            account_id,
        )
        found = [(r["kind"], json.loads(r["details"])) for r in rows]
        return found if len(found) == 2 else []

    (connect, connected), (disconnect, disconnected) = await eventually(
        connection_events, timeout=5
    )
    assert (connect, disconnect) == ("connect", "disconnect")
    assert connected["worker"].startswith("worker-")
    assert disconnected == {"reason": "requested", "worker": connected["worker"]}
    # One more job on the connected client writes no further event.
    assert (await run(api, "telegram.get_me", account_id=account["id"]))["status"] == "succeeded"
    assert (await run(api, "telegram.get_me", account_id=account["id"]))["status"] == "succeeded"

    async def connects() -> int:
        return int(
            await pg.fetchval(
                """SELECT count(*) FROM account_events
                   WHERE account_id = $1 AND kind = 'connect'""",
                account_id,
            )
        )

    await eventually(connects)  # the reconnect after the requested disconnect ...
    assert await connects() == 2  # ... and nothing for the job on the connected client
