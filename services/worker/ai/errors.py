"""What a provider's answer means for the job: the one mapping of AI errors to outcomes."""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime
from typing import Any

import orjson

from shared.errors import JobFailure, PermanentFailure, RetryableFailure

MAX_RETRY_AFTER = 900.0  # seconds; a longer Retry-After is treated as this
_MESSAGE_CHARS = 300  # of a provider's error text, so a large body never reaches logs


class ProviderError(Exception):
    """A provider call that did not produce an answer.

    ``outcome`` labels the request metric; ``breaker`` says whether it counts as a
    provider failure for the circuit breaker (server errors, timeouts, network), and
    ``retry_after`` carries a Retry-After in seconds.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        outcome: str,
        retryable: bool,
        breaker: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.outcome = outcome
        self.retryable = retryable
        self.breaker = breaker
        self.retry_after = retry_after

    def as_failure(self) -> JobFailure:
        if not self.retryable:
            return PermanentFailure(self.code, self.message)
        details = {"retry_after": self.retry_after} if self.retry_after else None
        return RetryableFailure(self.code, self.message, details)


def timeout(provider: str, seconds: float) -> ProviderError:
    return ProviderError(
        "provider_timeout",
        f"{provider} did not answer within {seconds:g} s.",
        outcome="timeout",
        retryable=True,
        breaker=True,
    )


def unreachable(provider: str, exc: Exception) -> ProviderError:
    return ProviderError(
        "provider_unreachable",
        f"{provider} could not be reached: {type(exc).__name__}.",
        outcome="network",
        retryable=True,
        breaker=True,
    )


def bad_response(provider: str, why: str) -> ProviderError:
    return ProviderError(
        "provider_bad_response",
        f"{provider} sent an unusable answer: {why}.",
        outcome="bad_response",
        retryable=True,
        breaker=True,
    )


def from_status(
    provider: str, status: int, body: bytes, headers: Any, now: datetime | None = None
) -> ProviderError:
    """An error for a non-2xx answer (``headers`` is any mapping with ``get``)."""
    detail = _error_text(body)
    said = f"{provider} answered {status}" + (f": {detail}" if detail else "")
    if status in (401, 403):
        return ProviderError("provider_auth", said, outcome="auth", retryable=False)
    if status == 429:
        after = retry_after_seconds(headers, now or datetime.now(UTC))
        return ProviderError(
            "provider_rate_limited", said, outcome="rate_limited", retryable=True, retry_after=after
        )
    if status == 408 or status >= 500:
        after = retry_after_seconds(headers, now or datetime.now(UTC)) if status == 503 else None
        return ProviderError(
            "provider_error",
            said,
            outcome="server_error",
            retryable=True,
            breaker=True,
            retry_after=after,
        )
    if status == 404:
        return ProviderError("provider_not_found", said, outcome="not_found", retryable=False)
    return ProviderError("provider_bad_request", said, outcome="bad_request", retryable=False)


def retry_after_seconds(headers: Any, now: datetime) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return _bounded(float(millis) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return _bounded(float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return _bounded((when - now).total_seconds())


def _bounded(seconds: float) -> float | None:
    return min(seconds, MAX_RETRY_AFTER) if seconds > 0 else None


def _error_text(body: bytes) -> str:
    """The provider's own error message (OpenAI shape), cut short."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    error = data.get("error") if isinstance(data, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    return str(message)[:_MESSAGE_CHARS] if message else ""
