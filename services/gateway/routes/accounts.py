"""Telegram accounts: import a session, list and read accounts (sessions never leave)."""

import asyncio
import binascii
import struct
import time
import uuid
from collections.abc import Collection
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from telethon.sessions import StringSession

from services.gateway import repository
from services.gateway.deps import Reader, State, Writer
from services.gateway.errors import ApiError
from shared import transit
from shared.ids import uuid7
from shared.jobs import REGISTRY
from shared.jobs.envelope import Envelope, utcnow
from shared.jobs.record import JobRecord
from shared.telegram_dcs import KNOWN_DC_IDS
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
    next_cursor: str | None = None


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
    if session.dc_id not in KNOWN_DC_IDS:  # the address inside is never used, the DC id is
        raise ApiError(
            422,
            "invalid_session",
            f"session_string names data centre {session.dc_id}, which Telegram does not have.",
            [{"field": "session_string", "message": "unknown data centre"}],
        )


def account_uuid(raw: str) -> uuid.UUID:
    """The account id in a path; an id that is not a UUID names no account (404)."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise not_found(raw) from None


def not_found(account_id: object) -> ApiError:
    return ApiError(404, "account_not_found", f"No account {account_id} for this tenant.")


async def await_job(state: State, job_id: str, wait_seconds: float) -> JobRecord | None:
    """Wait briefly for a control job to finish; None if it is still going."""
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        record = await state.jobs.get(job_id)
        if record is not None and record.status.is_terminal:
            return record
        await asyncio.sleep(0.02)
    return None


# How a failed control job answers: the client's mistakes are 4xx, the rest 502.
_ERROR_STATUS = {
    "session_invalid": 422,
    "session_expired": 422,
    "session_in_use": 409,
    "import_in_progress": 409,
    "phone_code_invalid": 400,
    "phone_code_expired": 400,
    "password_invalid": 400,
    "password_expired": 400,
    "account_not_found": 404,
    "login_not_pending": 409,
    "login_attempts_exceeded": 409,  # the login is cancelled: only a new one can go on
    "password_not_expected": 409,
    "phone_number_invalid": 422,
    "phone_number_unoccupied": 422,  # no Telegram account has the number
    "phone_number_banned": 403,
    "user_deactivated_ban": 403,  # the number's Telegram account is banned
    "user_deactivated": 403,  # ...or deleted
    "login_expired": 409,  # Telegram forgot the login's session: only a new login goes on
    "phone_number_flood": 429,  # codes asked for too often; Telegram names no wait
    "phone_password_flood": 429,
    "flood_wait": 429,  # Telegram's flood wait on a login step or import: try again after it
    "timeout": 504,  # Telegram did not answer in time: the same request may be sent again
}


async def control(state: State, tenant: str, name: str, params: dict[str, Any]) -> Any:
    """Run a control job and wait for it: its result, or a 202 with the job to follow."""
    job_type = REGISTRY[name]
    now = utcnow()
    env = Envelope(
        id=str(uuid7()),
        type=name,
        tenant=tenant,
        params=params,
        timeout=job_type.timeout,
        created_at=now,
        run_at=now,
        trace=inject_context(),
    )
    await state.jobs.submit(env)
    record = await await_job(state, env.id, state.settings.control_wait_seconds)
    if record is None:  # still going: hand back the job to follow
        return JSONResponse(
            {"job": {"id": env.id, "status": "running", "links": {"self": f"/v1/jobs/{env.id}"}}},
            status_code=202,
        )
    if record.error is not None:
        details: dict[str, Any] = {"job_id": env.id}
        headers = None
        retry_after = (record.error.details or {}).get("retry_after")
        waits = isinstance(retry_after, int) and retry_after > 0
        if waits:
            details["retry_after"] = retry_after
            headers = {"Retry-After": str(retry_after)}
        status = _status_of(record.error.code, record.error.details, waits)
        raise ApiError(status, record.error.code, record.error.message, details, headers)
    return record.result


def _status_of(code: str, details: dict[str, Any] | None, waits: bool) -> int:
    """The HTTP status of a failed control job: the client's mistakes are 4xx, the rest
    502."""
    known = _ERROR_STATUS.get(code)
    if known is not None:
        return known
    if waits:  # any wait Telegram names (flood_premium_wait, slow_mode_wait...)
        return 429
    refused = (details or {}).get("telegram_status")  # Telegram refused what was sent
    if refused == 403:
        return 403
    return 422 if refused in (400, 406) else 502


@router.post("/import", status_code=201, response_model=AccountView, summary="Adopt a session")
async def import_account(body: ImportRequest, state: State, principal: Writer) -> Any:
    _check_session(body.session_string)
    secret = state.settings.secret_key.get_secret_value()
    ref = await transit.put(state.redis, secret, body.session_string.strip())
    result = await control(state, principal.tenant, "account.import", {"session_ref": ref})
    if isinstance(result, JSONResponse):
        return result
    return await _load(state, principal.tenant, uuid.UUID(result["account_id"]))


class LoginRequest(BaseModel):
    phone: str = Field(pattern=r"^\+[0-9]{7,15}$", description="International format, +...")


class CodeRequest(BaseModel):
    code: str = Field(pattern=r"^[0-9]{4,8}$")


class PasswordRequest(BaseModel):
    password: str = Field(min_length=1, max_length=256, repr=False)


class LoginStepOut(BaseModel):
    account_id: uuid.UUID
    state: str
    next: str | None
    tg_user_id: int | None = None


@router.post("", status_code=201, response_model=LoginStepOut, summary="Start a login")
async def start_login(body: LoginRequest, state: State, principal: Writer) -> Any:
    return await control(state, principal.tenant, "account.login_start", {"phone": body.phone})


@router.post("/{account_id}/login/code", response_model=LoginStepOut, summary="Send the code")
async def login_code(account_id: str, body: CodeRequest, state: State, principal: Writer) -> Any:
    params = {"account_id": str(account_uuid(account_id)), "code": body.code}
    return await control(state, principal.tenant, "account.login_code", params)


@router.post(
    "/{account_id}/login/password", response_model=LoginStepOut, summary="Send the 2FA password"
)
async def login_password(
    account_id: str, body: PasswordRequest, state: State, principal: Writer
) -> Any:
    parsed = account_uuid(account_id)
    secret = state.settings.secret_key.get_secret_value()
    ref = await transit.put(state.redis, secret, body.password)
    params = {"account_id": str(parsed), "password_ref": ref}
    return await control(state, principal.tenant, "account.login_password", params)


@router.delete("/{account_id}", response_model=LoginStepOut, summary="Log out and erase")
async def delete_account(account_id: str, state: State, principal: Writer) -> Any:
    parsed = account_uuid(account_id)
    if await _load(state, principal.tenant, parsed) is None:
        raise not_found(parsed)
    params = {"account_id": str(parsed)}
    return await control(state, principal.tenant, "account.logout", params)


async def _load(state: State, tenant: str, account_id: uuid.UUID) -> AccountView | None:
    row = await state.db.fetchrow(
        f"SELECT {_COLUMNS} FROM accounts WHERE id = $1 AND tenant_id = $2",  # noqa: S608
        account_id,
        tenant,
    )
    return AccountView.model_validate(dict(row.items())) if row else None


@router.get("", response_model=AccountList, summary="The tenant's accounts, newest first")
async def list_accounts(
    state: State,
    principal: Reader,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> AccountList:
    """One page of accounts; ``next_cursor`` (None on the last page) asks for the next."""
    try:
        below = repository.decode_cursor(cursor) if cursor else None
    except repository.InvalidCursor:
        raise ApiError(
            400, "invalid_cursor", "The cursor is not one this API returned.", {"cursor": cursor}
        ) from None
    rows = await state.db.fetch(
        f"SELECT {_COLUMNS} FROM accounts WHERE tenant_id = $1 "  # noqa: S608
        "AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid)) "
        "ORDER BY created_at DESC, id DESC LIMIT $4",
        principal.tenant,
        below[0] if below else None,
        below[1] if below else None,
        limit + 1,  # one more than asked: whether a next page exists
    )
    items = [AccountView.model_validate(dict(r.items())) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = repository.encode_cursor(items[-1].created_at, str(items[-1].id))
    return AccountList(items=items, next_cursor=next_cursor)


@router.get("/{account_id}", response_model=AccountView, summary="One account")
async def get_account(account_id: str, state: State, principal: Reader) -> AccountView:
    account = await _load(state, principal.tenant, account_uuid(account_id))
    if account is None:
        raise not_found(account_id)
    return account


async def check_accounts(
    state: State, tenant: str, envs: list[Envelope], skip: Collection[int] = ()
) -> None:
    """Refuse Telegram jobs for unknown or unusable accounts before they are queued.

    One query for any number of jobs; the first bad one is reported (with its index
    when there are several). ``skip``: indexes of jobs not to check (replays).
    """
    refs = [
        (i, uuid.UUID(e.params["account_id"]))
        for i, e in enumerate(envs)
        if "account_id" in e.params and i not in skip
    ]
    if not refs:
        return
    rows = await state.db.fetch(
        "SELECT id, state, disabled_reason FROM accounts "
        "WHERE id = ANY($1::uuid[]) AND tenant_id = $2",
        list({account_id for _, account_id in refs}),
        tenant,
    )
    found = {r["id"]: r for r in rows}
    for index, account_id in refs:
        where = {"index": index} if len(envs) > 1 else {}
        prefix = f"jobs[{index}]: " if len(envs) > 1 else ""
        row = found.get(account_id)
        if row is None:
            raise ApiError(
                404,
                "account_not_found",
                f"{prefix}No account {account_id} for this tenant.",
                where or None,
            )
        if row["state"] in ("disabled", "login_pending"):
            raise ApiError(
                409,
                "account_not_active",
                f"{prefix}The account is {row['state']}.",
                {**where, "state": row["state"], "reason": row["disabled_reason"]},
            )
