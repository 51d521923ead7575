"""Account control jobs: the gateway awaits their short result.

Steps on an account that exists (login code, 2FA password, logout) run on the account's
Telegram shard, so its session is only ever connected by the worker owning the shard;
starting a login and importing a session create the account and run on the control queue.
"""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field

from shared.jobs.contract import JobType, QueueKind, RetryPolicy, register


class ImportParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    session_ref: str = Field(min_length=8, max_length=64, description="A transit reference.")


class AccountOut(BaseModel):
    account_id: uuid.UUID
    tg_user_id: int
    username: str | None
    state: str


IMPORT = register(
    JobType(
        name="account.import",
        params=ImportParams,
        result=AccountOut,
        queue=QueueKind.CONTROL,
        timeout=60,
        summary="Adopt a session string after validating it (POST /v1/accounts/import).",
        retry=RetryPolicy(max_tries=2, base_seconds=1.0, cap_seconds=5.0),
    )
)


class LoginStartParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phone: str = Field(pattern=r"^\+[0-9]{7,15}$")


class LoginCodeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account_id: uuid.UUID
    code: str = Field(pattern=r"^[0-9]{4,8}$")


class LoginPasswordParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account_id: uuid.UUID
    password_ref: str = Field(min_length=8, max_length=64, description="A transit reference.")


class AccountIdParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account_id: uuid.UUID


class LoginStep(BaseModel):
    account_id: uuid.UUID
    state: str
    next: str | None = Field(description="code, password, or null when logged in")
    tg_user_id: int | None = None


def _control(
    name: str,
    params: type[BaseModel],
    result: type[BaseModel],
    summary: str,
    queue: QueueKind = QueueKind.CONTROL,
) -> None:
    register(
        JobType(
            name=name,
            params=params,
            result=result,
            queue=queue,
            timeout=60,
            summary=summary,
            retry=RetryPolicy(max_tries=1),
        )
    )


_control("account.login_start", LoginStartParams, LoginStep, "Send a login code to a phone.")
_ON_SHARD = QueueKind.TELEGRAM
_control("account.login_code", LoginCodeParams, LoginStep, "Complete a login.", _ON_SHARD)
_control(
    "account.login_password", LoginPasswordParams, LoginStep, "Complete a 2FA login.", _ON_SHARD
)
_control("account.logout", AccountIdParams, LoginStep, "Log out, erase the session.", _ON_SHARD)


class CleanupParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    older_than_days: int | None = Field(default=None, ge=0, le=3650)


class CleanupResult(BaseModel):
    erased: int


_control(
    "telegram.cleanup_sessions",
    CleanupParams,
    CleanupResult,
    "Erase sessions of accounts invalid for longer than the retention period.",
)
