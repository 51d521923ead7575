"""Account routes answered by the gateway alone: listing, health, unknown ids."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from tests.helpers import add_accounts, auth, gateway_client


@pytest.fixture
async def api() -> AsyncIterator[httpx.AsyncClient]:
    async with gateway_client() as client:
        yield client


async def test_accounts_list_in_pages_newest_first(
    api: httpx.AsyncClient, pg: asyncpg.Connection[Any]
) -> None:
    tied = datetime(2030, 1, 1, tzinfo=UTC)  # same created_at: the id breaks the tie
    ids = await add_accounts(pg, [("active", None)] * 5, at=tied)
    ids += await add_accounts(pg, [("active", None)] * 6)
    expected = [
        str(r["id"])
        for r in await pg.fetch("SELECT id FROM accounts ORDER BY created_at DESC, id DESC")
    ]
    assert sorted(expected) == sorted(str(i) for i in ids)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 4} | ({"cursor": cursor} if cursor else {})
        page = await api.get("/v1/accounts", params=params, headers=auth())
        assert page.status_code == 200, page.text
        body = page.json()
        seen += [a["id"] for a in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == expected
    whole = (await api.get("/v1/accounts", headers=auth())).json()
    assert [a["id"] for a in whole["items"]] == expected
    assert whole["next_cursor"] is None


async def test_accounts_list_refuses_a_bad_cursor_or_limit(api: httpx.AsyncClient) -> None:
    bad = await api.get("/v1/accounts", params={"cursor": "not-a-cursor"}, headers=auth())
    assert bad.status_code == 400  # as on /v1/jobs and /v1/dead-letters
    assert bad.json()["error"]["code"] == "invalid_cursor"
    for limit in (0, 1001):
        over = await api.get("/v1/accounts", params={"limit": limit}, headers=auth())
        assert over.status_code == 422


async def test_logged_out_accounts_leave_health_ok(
    api: httpx.AsyncClient, pg: asyncpg.Connection[Any]
) -> None:
    await add_accounts(pg, [("active", None), ("disabled", "logged_out")])
    health = (await api.get("/v1/telegram/health", headers=auth())).json()
    assert health["status"] == "ok"
    assert health["accounts"] == {"total": 1, "by_state": {"active": 1}}
    await add_accounts(pg, [("disabled", "revoked")])
    health = (await api.get("/v1/telegram/health", headers=auth())).json()
    assert health["status"] == "degraded"
    assert health["accounts"] == {"total": 2, "by_state": {"active": 1, "disabled": 1}}


async def test_a_malformed_account_id_is_an_unknown_account(api: httpx.AsyncClient) -> None:
    missing = await api.get(f"/v1/accounts/{uuid.uuid4()}", headers=auth())
    assert missing.status_code == 404
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/v1/accounts/not-a-uuid", None),
        ("DELETE", "/v1/accounts/not-a-uuid", None),
        ("POST", "/v1/accounts/not-a-uuid/login/code", {"code": "12345"}),
        ("POST", "/v1/accounts/not-a-uuid/login/password", {"password": "pw"}),
        ("GET", "/v1/telegram/connections/not-a-uuid", None),
        ("DELETE", "/v1/telegram/connections/not-a-uuid", None),
    ]
    for method, path, body in calls:
        answer = await api.request(method, path, json=body, headers=auth())
        assert answer.status_code == 404, (method, path, answer.text)
        error = answer.json()["error"]
        assert error.keys() == missing.json()["error"].keys(), (method, path)
        assert error["code"] == "account_not_found"
        assert error["message"] == "No account not-a-uuid for this tenant."
