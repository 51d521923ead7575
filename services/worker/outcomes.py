"""The one place that decides what an exception means for a job."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from asyncpg import PostgresConnectionError
from asyncpg.exceptions import ConnectionDoesNotExistError
from pydantic import ValidationError
from redis.exceptions import RedisError

from shared.errors import Deferral, PermanentFailure, RetryableFailure
from shared.jobs import RetryPolicy


class Action(StrEnum):
    RETRY = "retry"
    DEFER = "defer"
    FAIL = "fail"


@dataclass(frozen=True)
class Outcome:
    action: Action
    code: str
    message: str
    until: datetime | None = None
    details: dict[str, Any] | None = None  # kept with the job's error when it fails for good


def classify(exc: BaseException) -> Outcome:
    """Map an exception raised by a handler to retry, defer or fail."""
    match exc:
        case Deferral():
            return Outcome(Action.DEFER, exc.code, exc.message, exc.until)
        case RetryableFailure():
            return Outcome(Action.RETRY, exc.code, exc.message, _not_before(exc), exc.details)
        case PermanentFailure():
            return Outcome(Action.FAIL, exc.code, exc.message, details=exc.details)
        case RedisError() | PostgresConnectionError() | ConnectionDoesNotExistError():
            # tgflow's own stores blinked: not the job's failure, so no try is spent.
            until = datetime.now(UTC) + timedelta(seconds=random.uniform(0.5, 1.5))
            return Outcome(Action.DEFER, "store_unavailable", f"{type(exc).__name__}", until)
        case ValidationError():
            return Outcome(Action.FAIL, "invalid_params", _first_error(exc))
        case TimeoutError():
            return Outcome(Action.RETRY, "timeout", "The job ran past its timeout.")
        case ConnectionError() | OSError():
            return Outcome(Action.RETRY, "network_error", f"{type(exc).__name__}: {exc}")
        case _:
            return Outcome(Action.FAIL, "internal_error", f"{type(exc).__name__}: {exc}")


def _not_before(exc: RetryableFailure) -> datetime | None:
    """A retry's earliest time, from ``details["retry_after"]`` seconds (a Retry-After)."""
    after = (exc.details or {}).get("retry_after")
    if not isinstance(after, int | float) or after <= 0:
        return None
    return datetime.now(UTC) + timedelta(seconds=after)


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"Invalid params: {where}: {first['msg']}"


def retry_delay(policy: RetryPolicy, attempt: int, not_before: datetime | None) -> float:
    """Backoff for this attempt, but never before ``not_before`` (plus a little jitter)."""
    delay = backoff_seconds(policy, attempt)
    if not_before is None:
        return delay
    wait = (not_before - datetime.now(UTC)).total_seconds()
    return max(delay, wait + random.uniform(0, min(1.0, wait * 0.1)))


def backoff_seconds(policy: RetryPolicy, attempt: int) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2^(attempt-1))]."""
    ceiling = min(policy.cap_seconds, policy.base_seconds * (2 ** max(0, attempt - 1)))
    return random.uniform(0, ceiling)
