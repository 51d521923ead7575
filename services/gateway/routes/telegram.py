"""Telegram operations for a tenant: health, statistics, connections and cleanup."""

import time
import uuid
from typing import Any, cast

from fastapi import APIRouter
from pydantic import BaseModel, Field

from services.gateway.deps import Reader, State, Writer
from services.gateway.routes.accounts import account_uuid, control, not_found
from shared import registry
from shared.telegram_keys import DISCONNECT_CHANNEL, presence_key, stats_key

router = APIRouter(prefix="/v1/telegram", tags=["telegram"])


async def _connected(state: State, ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, str]]:
    if not ids:
        return {}
    async with state.redis.pipeline(transaction=False) as pipe:
        for account_id in ids:
            pipe.hgetall(presence_key(account_id))
        rows = cast(list[dict[str, str]], await pipe.execute())
    return {i: r for i, r in zip(ids, rows, strict=True) if r}


@router.get("/health", summary="Pool and accounts summary")
async def health(state: State, principal: Reader) -> dict[str, Any]:
    """Accounts by state, connected clients and live workers; ``degraded`` while any
    account is disabled or reconnecting.

    Accounts logged out on request (``DELETE /v1/accounts/{id}``, disabled with reason
    ``logged_out``) are left out altogether, from the counts as from the status: their
    session is erased on purpose, nothing is wrong. ``GET /v1/accounts`` still lists them.
    """
    rows = await state.db.fetch(
        """SELECT id, state FROM accounts
           WHERE tenant_id = $1 AND disabled_reason IS DISTINCT FROM 'logged_out'""",
        principal.tenant,
    )
    by_state: dict[str, int] = {}
    for row in rows:
        by_state[row["state"]] = by_state.get(row["state"], 0) + 1
    connected = await _connected(state, [r["id"] for r in rows])
    workers = await registry.live_instances(state.redis, "worker")
    healthy = by_state.get("disabled", 0) == 0 and by_state.get("reconnecting", 0) == 0
    return {
        "status": "ok" if healthy else "degraded",
        "accounts": {"total": len(rows), "by_state": by_state},
        "connected": len(connected),
        "workers": len(workers),
    }


@router.get("/stats", summary="Connections, states, floods, reconnects and calls by method")
async def stats(state: State, principal: Reader) -> dict[str, Any]:
    tenant = principal.tenant
    states = await state.db.fetch(
        "SELECT state, count(*) AS n FROM accounts WHERE tenant_id = $1 GROUP BY state", tenant
    )
    events = await state.db.fetch(
        """SELECT kind, details->>'to' AS to_state, count(*) AS n FROM account_events
           WHERE tenant_id = $1 AND created_at > now() - interval '24 hours'
           GROUP BY kind, details->>'to'""",
        tenant,
    )
    ids = [
        r["id"]
        for r in await state.db.fetch("SELECT id FROM accounts WHERE tenant_id = $1", tenant)
    ]
    calls: dict[str, dict[str, int]] = {}
    raw = cast(dict[str, str], await state.redis.hgetall(stats_key(tenant)))  # type: ignore[misc]
    for field, count in raw.items():
        method, _, outcome = field.rpartition(":")
        calls.setdefault(method, {})[outcome] = int(count)
    flood = sum(e["n"] for e in events if e["kind"] == "flood_wait")
    reconnects = sum(e["n"] for e in events if e["to_state"] == "reconnecting")
    return {
        "connections": len(await _connected(state, ids)),
        "accounts_by_state": {r["state"]: r["n"] for r in states},
        "last_24h": {"long_flood_waits": flood, "reconnects": reconnects},
        "requests_by_method": calls,
        "flood_waits": sum(outcomes.get("flood_wait", 0) for outcomes in calls.values()),
    }


@router.get("/connections/{account_id}", summary="An account's connection")
async def connection(account_id: str, state: State, principal: Reader) -> dict[str, Any]:
    parsed = account_uuid(account_id)
    row = await state.db.fetchrow(
        """SELECT state, disabled_reason, flood_until, last_error, last_used_at
           FROM accounts WHERE id = $1 AND tenant_id = $2""",
        parsed,
        principal.tenant,
    )
    if row is None:
        raise not_found(parsed)
    presence = (await _connected(state, [parsed])).get(parsed)
    return {
        "account_id": parsed,
        "state": row["state"],
        "disabled_reason": row["disabled_reason"],
        "flood_until": row["flood_until"],
        "last_error": row["last_error"],
        "last_used_at": row["last_used_at"],
        "connected": presence is not None,
        "worker": presence.get("worker") if presence else None,
        "connected_for_seconds": round(time.time() - float(presence["connected_at"]), 3)
        if presence
        else None,
    }


@router.delete("/connections/{account_id}", status_code=202, summary="Disconnect now")
async def disconnect(account_id: str, state: State, principal: Writer) -> dict[str, Any]:
    parsed = account_uuid(account_id)
    exists = await state.db.fetchval(
        "SELECT 1 FROM accounts WHERE id = $1 AND tenant_id = $2", parsed, principal.tenant
    )
    if exists is None:
        raise not_found(parsed)
    listeners = await state.redis.publish(DISCONNECT_CHANNEL, str(parsed))
    return {"account_id": parsed, "requested": True, "workers_notified": listeners}


class CleanupRequest(BaseModel):
    older_than_days: int | None = Field(default=None, ge=0, le=3650)


@router.post("/cleanup/sessions", summary="Erase sessions invalid past the retention period")
async def cleanup(state: State, principal: Writer, body: CleanupRequest | None = None) -> Any:
    body = body or CleanupRequest()  # no body: the configured retention
    return await control(
        state, principal.tenant, "telegram.cleanup_sessions", body.model_dump(exclude_none=True)
    )
