"""Account control jobs (control queue): the gateway awaits their short result."""

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
