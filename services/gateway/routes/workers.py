"""Live workers: what each serves, holds and runs (deployment-wide, operators only)."""

import time
from datetime import UTC, datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from services.gateway.deps import MonitorReader, State
from shared import registry

router = APIRouter(prefix="/v1", tags=["workers"])


class WorkerOut(BaseModel):
    id: str
    queues: list[str]
    shards: list[int] = Field(description="Telegram shards whose lease the worker holds.")
    shard_count: int | None = Field(description="Telegram shards in the deployment.")
    connected_accounts: int
    running_jobs: int
    running_job_ids: list[str] = Field(description="Up to 100 of the running jobs.")
    concurrency: int
    heartbeat_age_seconds: float
    started_at: datetime | None
    metrics_url: str | None


class WorkerList(BaseModel):
    workers: list[WorkerOut]
    shard_count: int | None
    unowned_shards: list[int] = Field(description="Shards no live worker announces holding.")


def _ints(raw: str) -> list[int]:
    return [int(x) for x in raw.split(",") if x.strip().isdigit()]


def worker_out(raw: dict[str, str], now: float) -> WorkerOut:
    started = raw.get("started_at")
    return WorkerOut(
        id=raw["id"],
        queues=[q for q in raw.get("queues", "").split(",") if q],
        shards=_ints(raw.get("held", "")),
        shard_count=int(raw["shards"]) if raw.get("shards", "").isdigit() else None,
        connected_accounts=int(raw.get("connected", 0) or 0),
        running_jobs=int(raw.get("running", 0) or 0),
        running_job_ids=[j for j in raw.get("running_ids", "").split(",") if j],
        concurrency=int(raw.get("concurrency", 0) or 0),
        heartbeat_age_seconds=round(max(0.0, now - float(raw.get("heartbeat_at", now))), 3),
        started_at=datetime.fromtimestamp(float(started), UTC) if started else None,
        metrics_url=raw.get("metrics_url"),
    )


@router.get("/workers", response_model=WorkerList, summary="Live workers and their shards")
async def list_workers(state: State, _: MonitorReader) -> WorkerList:
    now = time.time()
    workers = sorted(
        (worker_out(raw, now) for raw in await registry.live_instances(state.redis, "worker")),
        key=lambda w: w.id,
    )
    counts = {w.shard_count for w in workers if w.shard_count is not None}
    count = max(counts) if counts else None
    held = {n for w in workers for n in w.shards}
    unowned = [n for n in range(count) if n not in held] if count is not None else []
    return WorkerList(workers=workers, shard_count=count, unowned_shards=unowned)
