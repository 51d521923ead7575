"""AI usage: tokens, requests and cost per provider and model, for the caller's tenant."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from services.gateway.deps import Reader, State
from services.gateway.errors import ApiError
from services.gateway.schemas import QueryTime
from shared.jobs.envelope import utcnow

router = APIRouter(prefix="/v1/ai", tags=["ai"])

DEFAULT_WINDOW = timedelta(days=30)

_USAGE = """
SELECT provider, model,
       count(*) AS requests,
       count(*) FILTER (WHERE cached) AS cached_requests,
       coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
       coalesce(sum(completion_tokens), 0) AS completion_tokens,
       coalesce(sum(cost), 0) AS cost
FROM ai_usage
WHERE tenant_id = $1 AND created_at >= $2 AND created_at < $3
  AND ($4::text IS NULL OR provider = $4) AND ($5::text IS NULL OR model = $5)
GROUP BY provider, model
ORDER BY provider, model
"""


class UsageLine(BaseModel):
    provider: str
    model: str
    requests: int
    cached_requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float


class UsageTotals(BaseModel):
    requests: int = 0
    cached_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost: float = 0.0


class UsageReport(BaseModel):
    tenant: str
    since: datetime
    until: datetime
    items: list[UsageLine]
    totals: UsageTotals


@router.get("/usage", response_model=UsageReport, summary="AI tokens and cost by provider")
async def ai_usage(
    state: State,
    principal: Reader,
    since: Annotated[QueryTime | None, Query(description="Default: 30 days ago.")] = None,
    until: Annotated[QueryTime | None, Query(description="Default: now.")] = None,
    provider: str | None = None,
    model: str | None = None,
) -> UsageReport:
    end = until or utcnow()
    start = since or end - DEFAULT_WINDOW
    if start >= end:
        raise ApiError(
            422,
            "invalid_request",
            "since must be earlier than until.",
            [{"field": "since", "message": "not before until", "type": "value_error"}],
        )
    rows = await state.db.fetch(_USAGE, principal.tenant, start, end, provider, model)
    items = [
        UsageLine(
            **{k: r[k] for k in ("provider", "model", "requests", "cached_requests")},
            prompt_tokens=r["prompt_tokens"],
            completion_tokens=r["completion_tokens"],
            total_tokens=r["prompt_tokens"] + r["completion_tokens"],
            cost=float(r["cost"]),
        )
        for r in rows
    ]
    totals = UsageTotals()
    for line in items:
        totals.requests += line.requests
        totals.cached_requests += line.cached_requests
        totals.prompt_tokens += line.prompt_tokens
        totals.completion_tokens += line.completion_tokens
        totals.total_tokens += line.total_tokens
        totals.cost += line.cost
    totals.cost = round(totals.cost, 10)
    return UsageReport(tenant=principal.tenant, since=start, until=end, items=items, totals=totals)
