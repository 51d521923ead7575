"""The job contract: named job types with typed params and results.

A job type is declared once here (in ``shared/jobs``) and used by the gateway for
validation and OpenAPI, and by the worker to run it. Names are ``domain.action``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

P = TypeVar("P", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)

_NAME = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")


class QueueKind(StrEnum):
    """Jobs are split by kind so each worker loop serves functions it has."""

    TELEGRAM = "telegram"
    AI = "ai"
    CONTROL = "control"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped, for at most ``max_tries`` runs."""

    max_tries: int = 3
    base_seconds: float = 1.0
    cap_seconds: float = 300.0


class ParamsRejected(ValueError):
    """Params that parse but cannot run here (unknown provider, prompt too long).

    Raised by a job type's ``validate`` hook; the gateway answers 422 with ``code`` and
    the offending ``field`` (a dotted path inside params) with its ``kind`` (the details'
    type: ``code`` unless given), the worker fails the job.
    """

    def __init__(self, code: str, field: str, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field
        self.message = message
        self.kind = kind or code


@dataclass(frozen=True)
class JobType(Generic[P, R]):
    """A declared job type: its name, queue, models and limits.

    ``validate``, when set, checks parsed params against the process settings (for
    example a provider catalogue) and raises ``ParamsRejected``; it must not do I/O
    beyond reading configuration.
    """

    name: str
    params: type[P]
    result: type[R]
    queue: QueueKind
    timeout: float
    summary: str
    retry: RetryPolicy = RetryPolicy()
    validate: Callable[[P, Any], None] | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"job type name {self.name!r} is not of the form domain.action")
        if self.timeout <= 0:
            raise ValueError(f"job type {self.name} needs a positive timeout")


REGISTRY: dict[str, JobType[Any, Any]] = {}


def register(job_type: JobType[P, R]) -> JobType[P, R]:
    """Add a job type to the registry; a name may be declared only once."""
    if job_type.name in REGISTRY:
        raise ValueError(f"job type {job_type.name} declared twice")
    REGISTRY[job_type.name] = job_type
    return job_type


def queue_key(kind: QueueKind) -> str:
    """Redis key of the ARQ queue for a kind of job."""
    return f"tgflow:queue:{kind.value}"


def job_types_for(kind: QueueKind) -> list[JobType[Any, Any]]:
    return [jt for jt in REGISTRY.values() if jt.queue is kind]
