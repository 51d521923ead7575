"""Make a notifier for each configured receiver."""

from __future__ import annotations

import httpx

from services.monitor.notifiers import Notifier
from services.monitor.notifiers.alertmanager import AlertmanagerNotifier
from services.monitor.notifiers.config import (
    AlertmanagerReceiver,
    EmailReceiver,
    LogReceiver,
    NotifyConfig,
    Receiver,
    SlackReceiver,
    TelegramReceiver,
    WebhookReceiver,
)
from services.monitor.notifiers.email import EmailNotifier
from services.monitor.notifiers.log import LogNotifier
from services.monitor.notifiers.slack import SlackNotifier
from services.monitor.notifiers.telegram import TelegramNotifier
from services.monitor.notifiers.webhook import WebhookNotifier
from services.monitor.rules.loader import RuleLoadError
from shared.queue import JobStore


def build_notifiers(
    config: NotifyConfig, http: httpx.AsyncClient, jobs: JobStore
) -> dict[str, Notifier]:
    out: dict[str, Notifier] = {}
    for spec in config.receivers:
        try:
            out[spec.name] = _build(spec, http, jobs)
        except ValueError as exc:  # e.g. a secret_env that is not set
            raise RuleLoadError(f"receiver {spec.name}: {exc}") from None
    return out


def _build(spec: Receiver, http: httpx.AsyncClient, jobs: JobStore) -> Notifier:
    if isinstance(spec, WebhookReceiver):
        return WebhookNotifier(spec, http)
    if isinstance(spec, AlertmanagerReceiver):
        return AlertmanagerNotifier(spec, http)
    if isinstance(spec, SlackReceiver):
        return SlackNotifier(spec, http)
    if isinstance(spec, TelegramReceiver):
        return TelegramNotifier(spec, jobs)
    if isinstance(spec, EmailReceiver):
        return EmailNotifier(spec)
    assert isinstance(spec, LogReceiver)
    return LogNotifier(spec)
