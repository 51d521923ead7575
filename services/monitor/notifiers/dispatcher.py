"""Grouping, timing and deduplication of notifications.

Each cycle the alerts (open, plus resolved ones a receiver was told were firing) are
routed into groups. A new group waits ``group_wait``; then it is considered at most
once per ``cooldown``. Whether to send is decided against the notification log, the
record of what each receiver was last told: new unacknowledged alerts, resolutions
(where the receiver wants them) and ``repeat_interval`` trigger a send. Because the
log is in Postgres and written only after a successful delivery, a restart neither
repeats what was sent nor forgets what was not. Deliveries run as tasks with retries,
so a slow or failing receiver never holds up evaluation.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from services.monitor import metrics
from services.monitor.clock import iso
from services.monitor.inhibit import InhibitRule, inhibitors
from services.monitor.lifecycle import NOTIFIABLE, Alert, AlertState
from services.monitor.matchers import parse_matcher
from services.monitor.notifiers import Notifier, NotifierUnavailable, NotifyError
from services.monitor.notifiers.config import NotifyConfig, ReceiverBase
from services.monitor.notifiers.payload import Notification
from services.monitor.notifiers.routing import Route, build_route, group_of, match_routes
from services.monitor.repository import NflogEntry, Repository
from services.monitor.silences import Silence
from shared.logs import get_logger

log = get_logger(__name__)


class Action(Enum):
    NONE = 0
    SEND = 1
    CLEAR = 2  # forget resolved alerts the receiver does not want to hear about


def decide(
    entry: NflogEntry | None,
    firing: list[Alert],
    resolved: list[Alert],
    *,
    send_resolved: bool,
    repeat_interval: float,
    now: float,
) -> Action:
    """What to do for a group, given what its receiver was last told."""
    unacked = {a.id for a in firing if a.acknowledged_at is None}
    if entry is None:
        return Action.SEND if unacked else Action.NONE
    new = not unacked <= entry.firing
    repeat_due = bool(unacked) and now - entry.sent_at >= repeat_interval
    if new or repeat_due or (resolved and send_resolved):
        return Action.SEND
    return Action.CLEAR if resolved else Action.NONE


@dataclass
class Group:
    route: Route
    key: str
    labels: dict[str, str]
    next_flush: float
    task: asyncio.Task[None] | None = None

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()


@dataclass
class ReceiverStatus:
    last_outcome: str | None = None
    last_error: str | None = None
    last_at: float | None = None
    sent: int = 0
    failed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "last_at": iso(self.last_at)}


def _inhibit_rules(config: NotifyConfig) -> list[InhibitRule]:
    return [
        InhibitRule(
            tuple(parse_matcher(m) for m in spec.source_matchers),
            tuple(parse_matcher(m) for m in spec.target_matchers),
            tuple(spec.equal),
        )
        for spec in config.inhibit_rules
    ]


class Dispatcher:
    def __init__(
        self,
        config: NotifyConfig,
        notifiers: dict[str, Notifier],
        repo: Repository,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.root = build_route(config.route)
        self.receivers: dict[str, ReceiverBase] = {r.name: r for r in config.receivers}
        self.inhibit_rules = _inhibit_rules(config)
        self.notifiers = notifiers
        self.repo = repo
        self.sleep = sleep
        self.entries: dict[tuple[str, str], NflogEntry] = {}
        self.groups: dict[str, Group] = {}
        self.status = {name: ReceiverStatus() for name in self.receivers}

    async def load(self) -> None:
        self.entries = await self.repo.nflog()

    def referenced(self) -> set[Any]:
        """Alert ids some receiver was told are firing: their resolution is still owed."""
        return {alert_id for entry in self.entries.values() for alert_id in entry.firing}

    def mark_muted(self, alerts: list[Alert], silences: list[Silence], now: float) -> None:
        muting = inhibitors(self.inhibit_rules, [a for a in alerts if a.is_open])
        for alert in alerts:
            alert.muted_by = [f"silence:{s.id}" for s in silences if s.mutes(alert.labels, now)]
            alert.muted_by += [f"inhibited_by:{name}" for name in muting.get(alert.fingerprint, [])]

    async def process(self, alerts: list[Alert], silences: list[Silence], now: float) -> None:
        """Route, group and flush due groups; deliveries start as background tasks."""
        self.mark_muted(alerts, silences, now)
        buckets: dict[str, list[Alert]] = {}
        for alert in alerts:
            if alert.state is AlertState.PENDING:
                continue
            for route in match_routes(self.root, alert.labels):
                key, labels = group_of(route, alert.labels)
                buckets.setdefault(key, []).append(alert)
                if key not in self.groups:
                    self.groups[key] = Group(route, key, labels, now + route.group_wait)
        for key, group in list(self.groups.items()):
            members = buckets.get(key)
            if not members:
                if not group.busy:
                    del self.groups[key]
                continue
            if group.busy or now < group.next_flush:
                continue
            group.next_flush = now + group.route.cooldown
            await self._flush(group, members, now)

    async def _flush(self, group: Group, members: list[Alert], now: float) -> None:
        receiver = self.receivers[group.route.receiver]
        entry = self.entries.get((receiver.name, group.key))
        told = entry.firing if entry else frozenset()
        firing = [a for a in members if a.state in NOTIFIABLE and not a.muted_by]
        resolved = [a for a in members if a.state is AlertState.RESOLVED and a.id in told]
        action = decide(
            entry,
            firing,
            resolved,
            send_resolved=receiver.send_resolved,
            repeat_interval=group.route.repeat_interval,
            now=now,
        )
        if action is Action.CLEAR and entry is not None:
            cleared = NflogEntry(
                entry.firing - {a.id for a in resolved}, entry.resolved, entry.sent_at
            )
            await self._record(receiver.name, group, cleared, "cleared", 0, [], None, now)
            return
        if action is not Action.SEND:
            return
        for alert in firing + resolved:
            alert.refresh()
        shown_resolved = resolved if receiver.send_resolved else []
        notification = Notification(
            id=_notification_id(receiver.name, group.key, entry, firing, resolved),
            receiver=receiver.name,
            group_key=group.key,
            group_labels=group.labels,
            firing=firing,
            resolved=shown_resolved,
            sent_at=now,
            external_url=self.config.external_url,
        )
        new_entry = NflogEntry(
            frozenset(a.id for a in firing), frozenset(a.id for a in resolved), now
        )
        group.task = asyncio.create_task(self._deliver(receiver, group, notification, new_entry))

    async def _attempt(self, receiver: ReceiverBase, notification: Notification) -> None:
        metrics.NOTIFICATION_ATTEMPTS.labels(receiver.name).inc()
        try:
            async with asyncio.timeout(receiver.timeout):
                await self.notifiers[receiver.name].send(notification)
        except TimeoutError:
            raise NotifyError(f"timed out after {receiver.timeout:g}s") from None

    async def _deliver(
        self, receiver: ReceiverBase, group: Group, notification: Notification, entry: NflogEntry
    ) -> None:
        started = time.perf_counter()
        attempts, error = 0, None
        retrying = AsyncRetrying(
            stop=stop_after_attempt(receiver.retry_attempts),
            wait=wait_exponential(
                multiplier=receiver.retry_backoff, max=receiver.retry_backoff * 16
            ),
            retry=retry_if_exception(lambda e: isinstance(e, NotifyError) and e.retryable),
            sleep=self.sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    await self._attempt(receiver, notification)
        except (NotifyError, NotifierUnavailable) as exc:
            error = str(exc)
        except Exception as exc:  # a notifier bug must not take the monitor down
            log.exception("notifier crashed", receiver=receiver.name)
            error = f"{type(exc).__name__}: {exc}"
        metrics.NOTIFICATION_DURATION.labels(receiver.name).observe(time.perf_counter() - started)
        outcome = "failed" if error else "sent"
        summary = [
            {"id": str(a.id), "alertname": a.rule, "state": a.state.value}
            for a in notification.alerts
        ]
        if error:
            log.warning(
                "notification failed",
                receiver=receiver.name,
                group_key=group.key,
                attempts=attempts,
                error=error,
            )
        await self._record(
            receiver.name,
            group,
            None if error else entry,
            outcome,
            attempts,
            summary,
            error,
            notification.sent_at,
            status=notification.status,
        )

    async def _record(
        self,
        receiver: str,
        group: Group,
        entry: NflogEntry | None,
        outcome: str,
        attempts: int,
        alerts: list[dict[str, Any]],
        error: str | None,
        at: float,
        *,
        status: str = "",
    ) -> None:
        if entry is not None:
            self.entries[(receiver, group.key)] = entry
        if outcome != "cleared":
            metrics.NOTIFICATIONS.labels(receiver, outcome).inc()
            st = self.status[receiver]
            st.last_outcome, st.last_error, st.last_at = outcome, error, at
            st.sent += outcome == "sent"
            st.failed += outcome == "failed"
        try:
            await self.repo.record_notification(
                receiver, group.key, entry=entry, status=status, outcome=outcome,
                attempts=attempts, alerts=alerts, error=error, at=at,
            )  # fmt: skip
        except Exception as exc:
            # Delivered but not logged: memory still knows, so this process will not
            # resend; after a restart it would (at least once, never lost).
            metrics.PERSIST_ERRORS.labels("nflog").inc()
            log.warning("notification log write failed", receiver=receiver, error=repr(exc))

    async def idle(self) -> None:
        """Wait for deliveries in flight (tests, and shutdown)."""
        tasks = [g.task for g in self.groups.values() if g.task is not None and not g.task.done()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def groups_json(self) -> list[dict[str, Any]]:
        return [
            {
                "key": g.key,
                "receiver": g.route.receiver,
                "labels": g.labels,
                "next_flush_at": iso(g.next_flush),
                "sending": g.busy,
            }
            for g in self.groups.values()
        ]


def _notification_id(
    receiver: str, key: str, entry: NflogEntry | None, firing: list[Alert], resolved: list[Alert]
) -> str:
    """Stable for the same content after the same previous send: a retry, even after a
    restart, carries the same id, while a repeat (a later send) gets a new one."""
    digest = hashlib.sha256()
    digest.update(f"{receiver}\x00{key}\x00{entry.sent_at if entry else ''}".encode())
    for alert in sorted(firing, key=lambda a: a.id):
        digest.update(b"F" + alert.id.bytes)
    for alert in sorted(resolved, key=lambda a: a.id):
        digest.update(b"R" + alert.id.bytes)
    return digest.hexdigest()[:32]
