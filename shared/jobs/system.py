"""Diagnostic job types used by health checks, tests and benchmarks."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from shared.jobs.contract import JobType, QueueKind, RetryPolicy, register


class EchoParams(BaseModel):
    """Anything to hand back unchanged."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(default="", max_length=65_536)
    data: JsonValue = None


class SleepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(ge=0, le=3600, description="How long to sleep; cancellable.")
    progress_every: float | None = Field(
        default=None,
        ge=0.01,
        le=3600,
        description="Report progress ({elapsed, seconds}) this often, in seconds.",
    )


class SleepResult(BaseModel):
    slept: float


ECHO = register(
    JobType(
        name="system.echo",
        params=EchoParams,
        result=EchoParams,
        queue=QueueKind.CONTROL,
        timeout=10.0,
        summary="Return the params unchanged.",
        retry=RetryPolicy(max_tries=1),
    )
)

SLEEP = register(
    JobType(
        name="system.sleep",
        params=SleepParams,
        result=SleepResult,
        queue=QueueKind.CONTROL,
        timeout=3660.0,
        summary="Sleep for N seconds; cancellable.",
        retry=RetryPolicy(max_tries=1),
    )
)
