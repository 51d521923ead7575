"""Outcomes a job can raise; the worker maps every exception to one of these."""

from __future__ import annotations

from datetime import datetime
from typing import Any


class JobFailure(Exception):
    """Base: a job ended without a result, with a stable code and a human message."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


class PermanentFailure(JobFailure):
    """Running the job again cannot help (bad input, forbidden, not found)."""


class RetryableFailure(JobFailure):
    """A transient fault (network, server error, timeout): try again with backoff."""


class Deferral(JobFailure):
    """Not now, but certainly later (flood wait): run again at ``until`` without spending a try."""

    def __init__(self, code: str, message: str, until: datetime) -> None:
        super().__init__(code, message, {"until": until.isoformat()})
        self.until = until
