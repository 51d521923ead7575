"""Job contract: every job type tgflow knows, importable from one place."""

from shared.jobs import accounts, ai, system, telegram
from shared.jobs.contract import (
    REGISTRY,
    TERMINAL_STATUSES,
    JobStatus,
    JobType,
    QueueKind,
    RetryPolicy,
    job_types_for,
    queue_key,
    register,
)

__all__ = [
    "REGISTRY",
    "TERMINAL_STATUSES",
    "JobStatus",
    "JobType",
    "QueueKind",
    "RetryPolicy",
    "accounts",
    "ai",
    "job_types_for",
    "queue_key",
    "register",
    "system",
    "telegram",
]
