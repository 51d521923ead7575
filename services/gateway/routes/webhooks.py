"""Completion webhooks: checking a submitted URL, a job's delivery state, the signing key."""

from __future__ import annotations

import uuid
from typing import cast

from fastapi import APIRouter
from pydantic import BaseModel

from services.gateway import repository
from services.gateway.deps import State, Writer
from services.gateway.errors import ApiError
from services.gateway.schemas import SubmitOptions
from shared.delivery.lua import webhook_key
from shared.delivery.webhooks import WebhookState, url_problem
from shared.jobs.record import JobRecord
from shared.queue import job_key

router = APIRouter(prefix="/v1", tags=["webhooks"])


def check_webhook(body: SubmitOptions, state: State, index: int | None = None) -> None:
    """Refuse a webhook URL this deployment may not call (its form is checked already)."""
    if body.webhook_url is None:
        return
    problem = url_problem(body.webhook_url, allow_private=state.settings.webhook_allow_private)
    if problem is None:
        return
    field = "webhook_url" if index is None else f"jobs.{index}.webhook_url"
    raise ApiError(
        422,
        "invalid_webhook_url",
        f"Invalid webhook URL: {problem}",
        [{"field": field, "message": problem, "type": "invalid_webhook_url"}],
    )


async def webhook_state(state: State, record: JobRecord) -> WebhookState | None:
    """The job's webhook: live in Redis, or settled in the archive once Redis let go."""
    async with state.redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(webhook_key(record.id))
        pipe.exists(job_key(record.id))
        raw, live = cast(tuple[dict[str, str], int], tuple(await pipe.execute()))
    if raw:
        return WebhookState.from_redis(raw)
    if live:
        return WebhookState.waiting(record.id, record.webhook_url) if record.webhook_url else None
    return await repository.get_webhook(state.db, record.tenant, uuid.UUID(record.id))


class SigningKey(BaseModel):
    tenant: str
    algorithm: str = "hmac-sha256"
    key: str


@router.get(
    "/webhooks/signing-key",
    response_model=SigningKey,
    summary="The key this tenant's completion webhooks are signed with",
)
async def signing_key(state: State, principal: Writer) -> SigningKey:
    return SigningKey(
        tenant=principal.tenant, key=state.settings.webhook_signing_key(principal.tenant)
    )
