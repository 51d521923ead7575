"""Notifiers: one module per kind, plus routing and the dispatcher that groups,
deduplicates against the notification log, and retries."""

from __future__ import annotations

from typing import Protocol

from services.monitor.notifiers.payload import Notification


class NotifyError(Exception):
    """A delivery failed; ``retryable`` says whether trying again soon may help."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class NotifierUnavailable(Exception):
    """The notifier cannot send at all (misconfigured or unsupported); no retry helps."""


class Notifier(Protocol):
    async def send(self, notification: Notification) -> None: ...
