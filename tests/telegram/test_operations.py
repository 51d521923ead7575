"""The Telegram operations routes, validation of idle sessions and cleanup."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx

from services.sandbox.admin_client import SandboxAdmin
from services.sandbox.server import Sandbox
from tests.helpers import auth, eventually
from tests.telegram.conftest import busy_account, close_runtime, import_account, open_runtime
from tests.telegram.test_jobs import run


async def test_health_stats_connections_and_disconnect(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    account, _ = await import_account(api, admin)
    await run(api, "telegram.get_me", account_id=account["id"])
    health = (await api.get("/v1/telegram/health", headers=auth())).json()
    assert health["accounts"] == {"total": 1, "by_state": {"active": 1}}
    assert health["connected"] == 1

    async def counted() -> Any:
        body = (await api.get("/v1/telegram/stats", headers=auth())).json()
        return body if body["requests_by_method"] else None

    stats = await eventually(counted, timeout=5)  # counters are flushed once a second
    assert stats["requests_by_method"]["users.getUsers"]["ok"] == 1
    assert stats["connections"] == 1
    conn = (await api.get(f"/v1/telegram/connections/{account['id']}", headers=auth())).json()
    assert conn["connected"] is True
    assert conn["worker"].startswith("worker-")
    dropped = await api.delete(f"/v1/telegram/connections/{account['id']}", headers=auth())
    assert dropped.status_code == 202
    assert dropped.json()["workers_notified"] >= 1

    async def gone() -> bool:
        body = (await api.get(f"/v1/telegram/connections/{account['id']}", headers=auth())).json()
        return body["connected"] is False

    await eventually(gone, timeout=5)
    # The next job simply connects again.
    again = await run(api, "telegram.get_me", account_id=account["id"])
    assert again["status"] == "succeeded"
    other = await api.get(f"/v1/telegram/connections/{account['id']}", headers=auth("globex"))
    assert other.status_code == 404


async def test_disconnect_now_closes_a_connection_jobs_keep_busy(
    api: httpx.AsyncClient, admin: SandboxAdmin, pg: asyncpg.Connection[Any]
) -> None:
    """A client in use without a pause still goes: the account's next jobs connect a new
    one at once, and the old one closes when its last job ends."""
    account, created = await import_account(api, admin)

    async def disconnects() -> int:
        n: int = await pg.fetchval(
            "SELECT count(*) FROM account_events WHERE account_id = $1 AND kind = 'disconnect'"
            " AND details->>'reason' = 'requested'",
            uuid.UUID(account["id"]),
        )
        return n

    async with busy_account(api, admin, account["id"], created["user_id"]):
        dropped = await api.delete(f"/v1/telegram/connections/{account['id']}", headers=auth())
        assert dropped.status_code == 202
        await eventually(disconnects, timeout=5)
    assert await disconnects() == 1
    assert await admin.overlaps() == []


async def test_validation_disables_dead_idle_sessions_and_cleanup_erases_them(
    api: httpx.AsyncClient, admin: SandboxAdmin, pg: asyncpg.Connection[Any], sandbox: Sandbox
) -> None:
    from services.worker.telegram.upkeep import validate_once

    alive, _ = await import_account(api, admin)
    dead, created = await import_account(api, admin)
    await admin.add_fault(created["user_id"], "revoke")
    runtime = await open_runtime(sandbox, "validator", telegram_validate_seconds=0.001)
    try:
        assert await validate_once(runtime) == 2
    finally:
        await close_runtime(runtime)
    states = {
        str(r["id"]): (r["state"], r["disabled_reason"])
        for r in await pg.fetch("SELECT id, state, disabled_reason FROM accounts")
    }
    assert states == {alive["id"]: ("active", None), dead["id"]: ("disabled", "revoked")}
    kept = await api.post("/v1/telegram/cleanup/sessions", json={}, headers=auth())
    assert kept.json() == {"erased": 0}  # within the 30-day retention
    bare = await api.post("/v1/telegram/cleanup/sessions", headers=auth())  # no body at all
    assert bare.json() == {"erased": 0}
    erased = await api.post(
        "/v1/telegram/cleanup/sessions", json={"older_than_days": 0}, headers=auth()
    )
    assert erased.json() == {"erased": 1}
    row = await pg.fetchrow(
        "SELECT session_ciphertext FROM accounts WHERE id = $1", uuid.UUID(dead["id"])
    )
    assert row["session_ciphertext"] is None
