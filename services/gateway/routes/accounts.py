"""Telegram accounts: import a session, list and read accounts (sessions never leave)."""

import asyncio
import binascii
import struct
import time
import uuid
from datetime import datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from telethon.sessions import StringSession

from services.gateway.deps import Reader, State, Writer
from services.gateway.errors import ApiError
from shared import transit
from shared.ids import uuid7
from shared.jobs import REGISTRY
from shared.jobs.envelope import Envelope, utcnow
from shared.jobs.record import JobRecord
from shared.telemetry import inject_context

router = APIRouter(prefix="/v1/accounts", tags=["accounts"])

_COLUMNS = """id, phone, tg_user_id, username, first_name, dc_id, state, disabled_reason,
    flood_until, last_error, last_used_at, created_at, updated_at"""


class ImportRequest(BaseModel):
    session_string: str = Field(min_length=8, max_length=4096, repr=False)


class AccountView(BaseModel):
    id: uuid.UUID
    phone: str | None
    tg_user_id: int | None
    username: str | None
    first_name: str | None
    dc_id: int | None
    state: str
    disabled_reason: str | None
    flood_until: datetime | None
    last_error: str | None
    last_used_at: datetime | None
    created_at: datetime
    updated_at: datetime


class AccountList(BaseModel):
    items: list[AccountView]


def _check_session(value: str) -> None:
    try:
        session = StringSession(value.strip())
    except (ValueError, binascii.Error, struct.error, UnicodeError):
        session = None
    if session is None or session.auth_key is None:
        raise ApiError(
            422,
            "invalid_session",
            "session_string is not a Telethon string session.",
            [{"field": "session_string", "message": "not a string session"}],
        )


async def await_job(state: State, job_id: str, wait_seconds: float) -> JobRecord | None:
    """Wait briefly for a control job to finish; None if it is still going."""
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        record = await state.jobs.get(job_id)
        if record is not None and record.status.is_terminal:
            return record
        await asyncio.sleep(0.02)
    return None


@router.post("/import", status_code=201, response_model=AccountView, summary="Adopt a session")
async def import_account(body: ImportRequest, state: State, principal: Writer) -> Any:
    _check_session(body.session_string)
    secret = state.settings.secret_key.get_secret_value()
    ref = await transit.put(state.redis, secret, body.session_string.strip())
    job_type = REGISTRY["account.import"]
    now = utcnow()
    env = Envelope(
        id=str(uuid7()),
        type=job_type.name,
        tenant=principal.tenant,
        params={"session_ref": ref},
        timeout=job_type.timeout,
        created_at=now,
        run_at=now,
        trace=inject_context(),
    )
    await state.jobs.submit(env, job_type.queue)
    record = await await_job(state, env.id, state.settings.control_wait_seconds)
    if record is None:  # still going: hand back the job to follow
        return JSONResponse(
            {"job": {"id": env.id, "status": "running", "links": {"self": f"/v1/jobs/{env.id}"}}},
            status_code=202,
        )
    if record.error is not None:
        status = 422 if record.error.code in ("session_invalid", "session_expired") else 502
        raise ApiError(status, record.error.code, record.error.message, {"job_id": env.id})
    account = await _load(state, principal.tenant, uuid.UUID(record.result["account_id"]))
    assert account is not None
    return account


async def _load(state: State, tenant: str, account_id: uuid.UUID) -> AccountView | None:
    row = await state.db.fetchrow(
        f"SELECT {_COLUMNS} FROM accounts WHERE id = $1 AND tenant_id = $2",  # noqa: S608
        account_id,
        tenant,
    )
    return AccountView.model_validate(dict(row.items())) if row else None


@router.get("", response_model=AccountList, summary="The tenant's accounts")
async def list_accounts(state: State, principal: Reader) -> AccountList:
    rows = await state.db.fetch(
        f"SELECT {_COLUMNS} FROM accounts WHERE tenant_id = $1 "  # noqa: S608
        "ORDER BY created_at DESC, id DESC LIMIT 1000",
        principal.tenant,
    )
    return AccountList(items=[AccountView.model_validate(dict(r.items())) for r in rows])


@router.get("/{account_id}", response_model=AccountView, summary="One account")
async def get_account(account_id: str, state: State, principal: Reader) -> AccountView:
    try:
        parsed = uuid.UUID(account_id)
    except ValueError:
        parsed = None
    account = await _load(state, principal.tenant, parsed) if parsed else None
    if account is None:
        raise ApiError(404, "account_not_found", f"No account {account_id} for this tenant.")
    return account


async def check_account(state: State, tenant: str, account_id: uuid.UUID) -> None:
    """Refuse a Telegram job for an unknown or unusable account before it is queued."""
    current = await state.db.fetchrow(
        "SELECT state, disabled_reason FROM accounts WHERE id = $1 AND tenant_id = $2",
        account_id,
        tenant,
    )
    if current is None:
        raise ApiError(404, "account_not_found", f"No account {account_id} for this tenant.")
    if current["state"] in ("disabled", "login_pending"):
        raise ApiError(
            409,
            "account_not_active",
            f"The account is {current['state']}.",
            {"state": current["state"], "reason": current["disabled_reason"]},
        )
