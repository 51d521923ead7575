"""One TelegramClient per account this worker serves, connected on demand.

Clients are created on first use, kept connected while used, disconnected after
``telegram_idle_seconds`` unused, health-checked every ``telegram_health_seconds``,
and evicted least-recently-used first when the pool is full. A client in use is never
evicted or recycled under a running job.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from redis.asyncio import Redis
from redis.exceptions import RedisError
from telethon import TelegramClient, types
from telethon.tl.functions.users import GetUsersRequest

from services.worker.telegram import accounts, metrics
from services.worker.telegram.accounts import Account
from services.worker.telegram.client import (
    ClosedUnderRequest,
    ConnectRefused,
    WorkerClient,
    api_credentials,
    client_options,
)
from services.worker.telegram.session import BoundedSession, Row
from services.worker.telegram.vault import Vault
from shared.aio import raise_if_cancelling, sleep_unless
from shared.config import WorkerSettings
from shared.db import Pool
from shared.errors import Deferral, PermanentFailure
from shared.jobs.envelope import utcnow
from shared.logs import get_logger
from shared.telegram_dcs import pin_dc
from shared.telegram_keys import PRESENCE_TTL, presence_key

log = get_logger(__name__)
TOUCH_SECONDS = 60.0  # an account's last_used_at is written at most this often by a worker


@dataclass
class Entry:
    client: TelegramClient
    tenant: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    in_use: int = 0
    last_used: float = field(default_factory=time.monotonic)
    last_health: float = field(default_factory=time.monotonic)
    retired: bool = False
    connected_at: float = 0.0
    touched: float = float("-inf")  # when last_used_at was last written for this account
    # No job has used this connection (a validation's own): no connect/disconnect events.
    quiet: bool = True
    key_hash: str | None = None  # the fingerprint of the auth key the client was made with
    keep_seen: bool = True  # whether its entities are kept for the next client when dropped


class ClientPool:
    def __init__(
        self, settings: WorkerSettings, vault: Vault, redis: Redis, worker_id: str, db: Pool
    ) -> None:
        self.settings = settings
        self.vault = vault
        self.redis = redis
        self.worker_id = worker_id
        self.db = db
        # Account events and last-use times wait here for one background writer, which
        # takes all that is pending in each round (a connect storm is a few statements).
        self._pending_events: list[accounts.EventRow] = []
        self._pending_touches: set[uuid.UUID] = set()
        self._writer: asyncio.Task[None] | None = None
        self.api_id, self.api_hash = api_credentials(settings)
        self.options = client_options(settings)
        self._entries: OrderedDict[uuid.UUID, Entry] = OrderedDict()
        self._creating: dict[uuid.UUID, asyncio.Lock] = {}
        self._failures: dict[uuid.UUID, int] = {}  # connection failures since the last connect
        self._retry_at: dict[uuid.UUID, float] = {}  # no new connection before (monotonic)
        # What the clients dropped lately had seen (ids, access hashes, usernames), by
        # account, least recently dropped first: a client made again for the account
        # starts with it, so a numeric id that worked before an idle drop still does.
        self._kept_entities: OrderedDict[uuid.UUID, list[Row]] = OrderedDict()
        # Whether this worker may connect an account now (it holds the account's shard).
        self.may_connect: Callable[[uuid.UUID], bool] = lambda _account_id: True

    def __len__(self) -> int:
        return len(self._entries)

    def holds(self, account_id: uuid.UUID) -> bool:
        return account_id in self._entries

    def is_connected(self, account_id: uuid.UUID) -> bool:
        entry = self._entries.get(account_id)
        return entry is not None and bool(entry.client.is_connected())

    def connected(self) -> list[uuid.UUID]:
        return [k for k, e in self._entries.items() if e.client.is_connected()]

    def key_of(self, account_id: uuid.UUID) -> str | None:
        """The fingerprint of the auth key this worker's client of the account holds."""
        entry = self._entries.get(account_id)
        return entry.key_hash if entry is not None else None

    @contextlib.asynccontextmanager
    async def lease(
        self, account: Account, *, quiet: bool = False
    ) -> AsyncIterator[TelegramClient]:
        """A connected client for ``account``, held for the duration of the block.

        ``quiet``: a connection made only to check the session (periodic validation)
        writes no connect or disconnect events, unless a job comes to use it too.
        """
        entry = await self._entry(account)
        entry.in_use += 1
        try:
            await self._ensure_connected(account, entry, quiet)
            if entry.quiet and not quiet:  # the first job on this connection: on record
                entry.quiet = False
                self._record([(account.id, entry.tenant, "connect", {"worker": self.worker_id})])
            yield entry.client
        finally:
            entry.in_use -= 1
            entry.last_used = time.monotonic()
            if entry.last_used - entry.touched >= TOUCH_SECONDS:
                entry.touched = entry.last_used
                self._pending_touches.add(account.id)
                self._write_soon()
            if account.id in self._entries:
                self._entries.move_to_end(account.id)
            if entry.retired and entry.in_use == 0:
                await self.drop(account.id, reason="retired")

    async def _entry(self, account: Account) -> Entry:
        entry = self._entries.get(account.id)
        if entry is not None:
            return entry
        lock = self._creating.setdefault(account.id, asyncio.Lock())
        async with lock:
            entry = self._entries.get(account.id)
            if entry is None:
                await self._make_room()
                client = self._new_client(account)
                key_hash = accounts.key_fingerprint(client.session.auth_key)
                entry = Entry(client, account.tenant, key_hash=key_hash)
                self._entries[account.id] = entry
        return entry

    def _new_client(self, account: Account) -> TelegramClient:
        if account.sealed is None:
            raise PermanentFailure("account_no_session", "The account has no stored session.")
        session = BoundedSession(
            self.vault.open(account.sealed, aad=account.aad),
            limit=self.settings.telegram_entities_per_account,
        )
        if not pin_dc(session, self.settings):  # the stored address is never trusted
            raise PermanentFailure("session_invalid", "The stored session names an unknown DC.")
        kept = self._kept_entities.pop(account.id, None)
        if kept:
            session.adopt(kept)
        return WorkerClient(
            session, self.api_id, self.api_hash, account_id=str(account.id), **self.options
        )

    async def _make_room(self) -> None:
        while len(self._entries) >= self.settings.telegram_max_clients:
            idle = next((k for k, e in self._entries.items() if e.in_use == 0), None)
            if idle is None:
                raise Deferral(
                    "pool_full", "Every client slot is busy.", utcnow() + timedelta(seconds=1)
                )
            await self.drop(idle, reason="evicted")

    def _wait_out_backoff(self, account_id: uuid.UUID) -> None:
        """Defer while the account's last connection failure's backoff runs."""
        at = self._retry_at.get(account_id)
        if at is None:
            return
        left = at - time.monotonic()
        if left <= 0:
            del self._retry_at[account_id]
            return
        raise Deferral(
            "reconnecting",
            f"Telegram was unreachable; the next try is in {left:.1f} s.",
            utcnow() + timedelta(seconds=left),
        )

    async def _ensure_connected(self, account: Account, entry: Entry, quiet: bool) -> None:
        self._wait_out_backoff(account.id)
        if entry.client.is_connected():
            return
        async with entry.lock:
            # Jobs that queued behind a failed connect: they wait out its backoff too,
            # rather than each trying (and timing out) again at once.
            self._wait_out_backoff(account.id)
            if entry.client.is_connected():
                return
            if not self.may_connect(account.id):
                raise Deferral(
                    "shard_moved",
                    "The account's shard is moving to another worker.",
                    utcnow() + timedelta(seconds=1),
                )
            await self._refuse_replaced(account.id, entry)
            entry.quiet = True  # a new connection: on record once a job leases it
            try:
                try:
                    await asyncio.wait_for(
                        entry.client.connect(), self.settings.telegram_request_timeout
                    )
                except asyncio.CancelledError as cancelled:  # disconnected while connecting
                    raise_if_cancelling()
                    raise ClosedUnderRequest from cancelled
            except (OSError, TimeoutError, ConnectionError) as exc:
                metrics.CONNECTS.labels("error").inc()
                # A connect that timed out may leave Telethon "connected" to a DC that
                # never answered: close it, so no job sends on it.
                with contextlib.suppress(Exception):
                    await entry.client.disconnect()
                if not self.may_connect(account.id):  # closed by a hand-off or a fence
                    raise Deferral(
                        "shard_moved",
                        "The account's shard is moving to another worker.",
                        utcnow() + timedelta(seconds=1),
                    ) from exc
                delay = self.connection_lost(account.id)
                raise Deferral(
                    "reconnecting",
                    f"Telegram unreachable ({type(exc).__name__}); retrying with backoff.",
                    utcnow() + timedelta(seconds=delay),
                ) from exc
            except Exception as exc:
                # Telegram answered, but refused a request of the connect: Telethon stays
                # connected, with none of the bookkeeping below. Close it, so no
                # connection is left that the pool does not show.
                metrics.CONNECTS.labels("error").inc()
                with contextlib.suppress(Exception):
                    await entry.client.disconnect()
                raise ConnectRefused(exc) from exc
            entry.last_health = time.monotonic()
            entry.connected_at = time.time()
            await self._announce(account.id, entry)
            metrics.CONNECTS.labels("ok").inc()
            metrics.CLIENTS_CONNECTED.set(len(self.connected()))
            metrics.account_connected(str(account.id), True)
            if quiet:
                log.debug("telegram client connected to validate", account_id=str(account.id))
            else:
                log.info("telegram client connected", account_id=str(account.id))

    async def _refuse_replaced(self, account_id: uuid.UUID, entry: Entry) -> None:
        """Defer a connect of a key the account no longer stores. A job that read the
        account just before a login or import replaced its session would otherwise
        connect the old key while (or after) its owner logs it out: a second connection
        to it, and an auth_key_unregistered that disables an account whose session is
        fine. The entry is made before this read, so a replacement committed after it
        finds the old key held here (``replaced``) and waits for it."""
        stored = await self.db.fetchval(
            "SELECT auth_key_hash FROM accounts WHERE id = $1", account_id
        )
        if not stored or stored == entry.key_hash:  # not fingerprinted yet: nothing to tell
            return
        self.retire(account_id)
        raise Deferral(
            "session_replaced",
            "The account's session was replaced; the job runs again with the new one.",
            utcnow() + timedelta(seconds=1),
        )

    def connection_lost(self, account_id: uuid.UUID) -> float:
        """Count a failure and recycle the client; the backoff before the next attempt.

        Exponential with full jitter, capped at a minute, and never giving up: the jobs
        wait (deferred, no try spent) while the account shows as reconnecting.
        """
        failures = self._failures.get(account_id, 0) + 1
        self._failures[account_id] = failures
        metrics.RECONNECTS.labels(str(account_id)).inc()
        self.retire(account_id)
        delay = random.uniform(0.5, min(60.0, 0.5 * 2 ** min(failures, 7)))
        self._retry_at[account_id] = time.monotonic() + delay
        return delay

    def connection_ok(self, account_id: uuid.UUID) -> None:
        """A call went through: the next loss starts the backoff from the beginning."""
        self._failures.pop(account_id, None)
        self._retry_at.pop(account_id, None)

    def retire(self, account_id: uuid.UUID) -> None:
        """Disconnect this account's client as soon as no job uses it (a dead session)."""
        entry = self._entries.get(account_id)
        if entry is not None:
            entry.retired = True

    async def drop(self, account_id: uuid.UUID, *, reason: str) -> bool:
        """Disconnect and forget a client (unless a job is using it)."""
        entry = self._entries.get(account_id)
        if entry is None or entry.in_use:
            return False
        del self._entries[account_id]
        self._keep_entities(account_id, entry)
        with contextlib.suppress(Exception):
            await entry.client.disconnect()
        with contextlib.suppress(RedisError, OSError):
            await self.redis.delete(presence_key(account_id))
        metrics.DISCONNECTS.labels(reason).inc()
        metrics.CLIENTS_CONNECTED.set(len(self.connected()))
        metrics.account_connected(str(account_id), False)
        log.info("telegram client disconnected", account_id=str(account_id), reason=reason)
        self._record_disconnects([(account_id, entry)], reason)
        return True

    def forget_entities(self, account_id: uuid.UUID) -> None:
        """A logout: what the account's clients saw goes with its session, now for a
        client dropped before, and when dropped for one still in use."""
        self._kept_entities.pop(account_id, None)
        entry = self._entries.get(account_id)
        if entry is not None:
            entry.keep_seen = False

    def _keep_entities(self, account_id: uuid.UUID, entry: Entry) -> None:
        """Keep a dropped client's entities for the account's next client (not after a
        logout, see ``forget_entities``)."""
        session = entry.client.session
        if not entry.keep_seen or not isinstance(session, BoundedSession):
            self._kept_entities.pop(account_id, None)
            return
        self._kept_entities[account_id] = session.rows()
        self._kept_entities.move_to_end(account_id)
        while len(self._kept_entities) > self.settings.telegram_max_clients:
            self._kept_entities.popitem(last=False)

    async def drop_matching(self, match: Callable[[uuid.UUID], bool], *, reason: str) -> int:
        """Disconnect and forget every client whose account matches, in use or not.

        For giving up a shard: its jobs have been stopped (or are being cancelled), and
        the connections must be closed before the lease can pass to another worker.
        """
        doomed = [(k, e) for k, e in self._entries.items() if match(k)]
        for account_id, entry in doomed:
            del self._entries[account_id]
            self._keep_entities(account_id, entry)
            with contextlib.suppress(Exception):
                await entry.client.disconnect()
            metrics.DISCONNECTS.labels(reason).inc()
            metrics.account_connected(str(account_id), False)
        self._record_disconnects(doomed, reason)
        if doomed:
            with contextlib.suppress(RedisError, OSError):
                await self.redis.delete(*(presence_key(a) for a, _ in doomed))
            metrics.CLIENTS_CONNECTED.set(len(self.connected()))
            log.info("telegram clients disconnected", count=len(doomed), reason=reason)
        return len(doomed)

    async def _announce(self, account_id: uuid.UUID, entry: Entry) -> None:
        fields = {"worker": self.worker_id, "connected_at": repr(entry.connected_at)}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(presence_key(account_id), mapping=fields)
            pipe.expire(presence_key(account_id), PRESENCE_TTL)
            await pipe.execute()

    async def maintain(self) -> None:
        """One pass: drop idle clients, recycle unhealthy ones, refresh presence."""
        now = time.monotonic()
        for account_id, entry in list(self._entries.items()):
            connected = entry.client.is_connected()
            metrics.account_connected(str(account_id), connected)  # a connection it lost too
            if connected:
                with contextlib.suppress(RedisError, OSError):
                    await self._announce(account_id, entry)
            if entry.in_use:
                continue
            if now - entry.last_used > self.settings.telegram_idle_seconds:
                await self.drop(account_id, reason="idle")
            elif now - entry.last_health > self.settings.telegram_health_seconds:
                await self._health_check(account_id, entry)

    async def _health_check(self, account_id: uuid.UUID, entry: Entry) -> None:
        """One cheap request on an idle client; a failure recycles it.

        The check holds the client like a job does, so a requested disconnect waits for
        it to end; a disconnect that will not wait (a hand-off, a fence) cancels the
        request under it, which counts as a failed check, not as the end of upkeep.
        """
        entry.last_health = time.monotonic()
        if not entry.client.is_connected():
            return
        method, account = "users.getUsers", str(account_id)
        start = time.perf_counter()
        entry.in_use += 1
        try:  # traced by the client like any request
            request = GetUsersRequest([types.InputUserSelf()])
            await asyncio.wait_for(entry.client(request), self.settings.telegram_request_timeout)
        except (Exception, asyncio.CancelledError) as exc:  # start over with a new connection
            raise_if_cancelling()
            failed: BaseException | None = exc
        else:
            failed = None
        finally:
            entry.in_use -= 1
        ok = failed is None
        metrics.observe_request(account, method, ok, time.perf_counter() - start)
        if not ok:
            log.warning("health check failed", account_id=account, error=type(failed).__name__)
            await self.drop(account_id, reason="unhealthy")
        elif entry.retired:  # a disconnect was asked for while the check ran
            await self.drop(account_id, reason="retired")

    async def run_maintenance(self, stop: asyncio.Event) -> None:
        interval = min(
            30.0, self.settings.telegram_idle_seconds / 4, self.settings.telegram_health_seconds / 2
        )
        while not await sleep_unless(stop, interval):
            try:
                await self.maintain()
            except Exception as exc:  # upkeep goes on: the next pass tries again
                raise_if_cancelling()
                log.warning("client pool upkeep failed", error=type(exc).__name__)

    async def close(self) -> None:
        closed = list(self._entries.items())
        for account_id, entry in closed:
            del self._entries[account_id]
            metrics.account_connected(str(account_id), False)
            with contextlib.suppress(Exception):
                await entry.client.disconnect()
            with contextlib.suppress(RedisError, OSError):
                await self.redis.delete(presence_key(account_id))
        metrics.CLIENTS_CONNECTED.set(0)
        self._record_disconnects(closed, "shutdown")
        if self._writer is not None:  # let the last events reach Postgres, within reason
            await asyncio.wait([self._writer], timeout=5.0)

    def _record_disconnects(self, gone: list[tuple[uuid.UUID, Entry]], reason: str) -> None:
        details = {"reason": reason, "worker": self.worker_id}
        self._record(
            [
                (a, e.tenant, "disconnect", details)
                for a, e in gone
                if e.connected_at and not e.quiet
            ]
        )

    def _record(self, events: list[accounts.EventRow]) -> None:
        """Write account events without making the caller wait for Postgres.

        They are written in the order recorded, so an account's connect always precedes
        its disconnect; a failed write is logged and never fails the (dis)connect.
        """
        if events:
            self._pending_events += events
            self._write_soon()

    def _write_soon(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_pending())

    async def _write_pending(self) -> None:
        while self._pending_events or self._pending_touches:
            events, self._pending_events = self._pending_events, []
            touches, self._pending_touches = self._pending_touches, set()
            try:
                if events:
                    await accounts.record_events(self.db, events)
                if touches:
                    await accounts.touch(self.db, list(touches))
            except Exception as exc:
                log.warning(
                    "account events or last use not written",
                    events=len(events),
                    touches=len(touches),
                    error=type(exc).__name__,
                )
