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
    SlackReceiver,
    TelegramReceiver,
    WebhookReceiver,
)
from services.monitor.notifiers.email import EmailNotifier
from services.monitor.notifiers.log import LogNotifier
from services.monitor.notifiers.slack import SlackNotifier
from services.monitor.notifiers.telegram import TelegramNotifier
from services.monitor.notifiers.webhook import WebhookNotifier
from shared.queue import JobStore


def build_notifiers(
    config: NotifyConfig, http: httpx.AsyncClient, jobs: JobStore
) -> dict[str, Notifier]:
    out: dict[str, Notifier] = {}
    for spec in config.receivers:
        notifier: Notifier
        if isinstance(spec, WebhookReceiver):
            notifier = WebhookNotifier(spec, http)
        elif isinstance(spec, AlertmanagerReceiver):
            notifier = AlertmanagerNotifier(spec, http)
        elif isinstance(spec, SlackReceiver):
            notifier = SlackNotifier(spec, http)
        elif isinstance(spec, TelegramReceiver):
            notifier = TelegramNotifier(spec, jobs)
        elif isinstance(spec, EmailReceiver):
            notifier = EmailNotifier(spec)
        else:
            assert isinstance(spec, LogReceiver)
            notifier = LogNotifier(spec)
        out[spec.name] = notifier
    return out
