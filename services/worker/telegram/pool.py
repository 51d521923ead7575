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
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta

from redis.asyncio import Redis
from redis.exceptions import RedisError
from telethon import TelegramClient

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
MIN_BACKOFF, MAX_BACKOFF = 0.5, 60.0  # seconds before connecting again after a loss
HEALTH_CHECKS_AT_ONCE = 32  # per worker; each is one request, waiting at most its timeout


def reconnect_backoff(failures: int) -> float:
    """The wait after the ``failures``-th connection lost in a row: full jitter over
    [0.5 s, a ceiling that doubles with each loss, from 1 s up to a minute]."""
    return random.uniform(MIN_BACKOFF, min(MAX_BACKOFF, MIN_BACKOFF * 2 ** min(failures, 7)))


@dataclass(eq=False)  # each entry is itself: a replaced one is found by identity
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
    # Its connection timed out or was lost: replaced for new leases, closed once unused.
    recycled: bool = False
    closing_reason: str = "retired"  # why it is closed once its last job lets go of it


# The client this task leased last (pool, account, entry), while it holds it: what a
# failure it reports happened on, where the pool may have replaced it since.
_HELD: ContextVar[tuple[ClientPool, uuid.UUID, Entry] | None] = ContextVar(
    "tgflow_pool_held", default=None
)


# One check of an idle client's account (account id, tenant); whether its call went through.
HealthCheck = Callable[[uuid.UUID, str], Awaitable[bool]]


class ClientPool:
    def __init__(
        self,
        settings: WorkerSettings,
        vault: Vault,
        redis: Redis,
        worker_id: str,
        db: Pool,
        check_health: HealthCheck,
    ) -> None:
        self.settings = settings
        self.vault = vault
        self.redis = redis
        self.worker_id = worker_id
        self.db = db
        self.check_health = check_health  # a call like a job's (``TelegramRuntime``)
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
        # Accounts whose last connection was recycled for a call that timed out.
        self._timed_out: set[uuid.UUID] = set()
        # Recycled clients, replaced in the pool, that calls still use (closed after them).
        self._replaced: list[tuple[uuid.UUID, Entry]] = []
        # What the clients dropped lately had seen (ids, access hashes, usernames), by
        # account, least recently dropped first: a client made again for the account
        # starts with it, so a numeric id that worked before an idle drop still does.
        self._kept_entities: OrderedDict[uuid.UUID, list[Row]] = OrderedDict()
        self._checks: set[asyncio.Task[None]] = set()  # health checks under way
        # Whether this worker may connect an account now (it holds the account's shard).
        self.may_connect: Callable[[uuid.UUID], bool] = lambda _account_id: True

    def __len__(self) -> int:
        return len(self._entries)

    def holds(self, account_id: uuid.UUID) -> bool:
        return account_id in self._entries

    def is_connected(self, account_id: uuid.UUID) -> bool:
        """Whether a client of the account here is connected: its own, or one replaced
        and still closing (``replace``), whose connection serves its last jobs."""
        entry = self._entries.get(account_id)
        if entry is not None and entry.client.is_connected():
            return True
        return any(a == account_id and e.client.is_connected() for a, e in self._replaced)

    def _connections(self) -> list[tuple[uuid.UUID, Entry]]:
        """Every connected client here, the accounts' own first, then replaced ones."""
        return [
            (a, e) for a, e in (*self._entries.items(), *self._replaced) if e.client.is_connected()
        ]

    def connected(self) -> list[uuid.UUID]:
        """The accounts with a connection here."""
        return list(dict.fromkeys(a for a, _ in self._connections()))

    def _count_connections(self) -> None:
        metrics.CLIENTS_CONNECTED.set(len(self._connections()))

    def key_of(self, account_id: uuid.UUID) -> str | None:
        """The fingerprint of the auth key this worker's client of the account holds."""
        entry = self._entries.get(account_id)
        return entry.key_hash if entry is not None else None

    def holds_key(self, account_id: uuid.UUID, key_hash: str) -> bool:
        """Whether a client here, the account's or one replaced and still in use, is of
        that auth key."""
        entry = self._entries.get(account_id)
        if entry is not None and entry.key_hash == key_hash:
            return True
        return any(a == account_id and e.key_hash == key_hash for a, e in self._replaced)

    @contextlib.asynccontextmanager
    async def lease(
        self, account: Account, *, quiet: bool = False, connect: bool = True
    ) -> AsyncIterator[TelegramClient]:
        """A connected client for ``account``, held for the duration of the block; with
        ``connect=False``, connected or not, for ``connect`` to connect when needed.

        ``quiet``: a connection made or used only to check the session (periodic
        validation, health checks) writes no connect or disconnect events, unless a job
        comes to use it too, and is no use of the client: an idle client stays idle.
        """
        entry = await self._entry(account)
        entry.in_use += 1
        held = _HELD.set((self, account.id, entry))
        try:
            if connect:
                await self._use_connected(account, entry, quiet)
            yield entry.client
        finally:
            _HELD.reset(held)
            entry.in_use -= 1
            if not quiet:
                self._used(account.id, entry)
            await self._let_go(account.id, entry)

    async def _let_go(self, account_id: uuid.UUID, entry: Entry, reason: str | None = None) -> None:
        """Close a retired client once the last call on it has ended, whether it is still
        the account's or was replaced meanwhile (recycled, ``replace``)."""
        if not entry.retired or entry.in_use:
            return
        reason = reason or entry.closing_reason
        if self._entries.get(account_id) is entry:
            await self.drop(account_id, reason=reason)
        elif (account_id, entry) in self._replaced:
            self._replaced.remove((account_id, entry))
            await self._close(account_id, entry, reason)

    def _used(self, account_id: uuid.UUID, entry: Entry) -> None:
        """A job used the client: it is the most recently used, and not idle."""
        entry.last_used = time.monotonic()
        if entry.last_used - entry.touched >= TOUCH_SECONDS:
            entry.touched = entry.last_used
            self._pending_touches.add(account_id)
            self._write_soon()
        if account_id in self._entries:
            self._entries.move_to_end(account_id)

    async def connect(self, account: Account, client: TelegramClient, *, quiet: bool) -> None:
        """Connect a client leased with ``connect=False`` (if it is not already)."""
        entry = self._entries.get(account.id)
        if entry is not None and entry.client is client:
            await self._use_connected(account, entry, quiet)
            return
        held = self._held(account.id)
        if held is not None and held.client is client and held.retired and not held.recycled:
            # Replaced under the lease (``replace``): the next try has the account's new one.
            replaced = held.closing_reason == "session_replaced"
            code = "session_replaced" if replaced else "client_closed"
            raise Deferral(code, "The account's client was closed; the job runs again.", utcnow())
        if self.may_connect(account.id):  # recycled under the lease: the next try connects anew
            left = self._retry_at.get(account.id, 0.0) - time.monotonic()
            raise Deferral(
                "reconnecting",
                "The account's connection failed and is being replaced.",
                utcnow() + timedelta(seconds=max(left, MIN_BACKOFF)),
            )
        raise Deferral(  # let go under the lease: a hand-off
            "shard_moved",
            "The account's shard is moving to another worker.",
            utcnow() + timedelta(seconds=1),
        )

    async def _use_connected(self, account: Account, entry: Entry, quiet: bool) -> None:
        await self._ensure_connected(account, entry, quiet)
        if entry.quiet and not quiet:  # the first job on this connection: on record
            entry.quiet = False
            self._record([(account.id, entry.tenant, "connect", {"worker": self.worker_id})])

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
        # Telethon shows a client connected as soon as its socket is, before the DC has
        # answered the connect's own requests: while a connect is under way, wait for it.
        if entry.client.is_connected() and not entry.lock.locked():
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
            if self._closing(account.id, entry.key_hash):  # one connection per key
                raise Deferral(
                    "client_closing",
                    "The account's previous connection closes when its jobs end; "
                    "the job runs again then.",
                    utcnow() + timedelta(seconds=MIN_BACKOFF),
                )
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
            await self._announce([(account.id, entry)])
            metrics.CONNECTS.labels("ok").inc()
            self._count_connections()
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
        self.replace(account_id, reason="session_replaced")
        raise Deferral(
            "session_replaced",
            "The account's session was replaced; the job runs again with the new one.",
            utcnow() + timedelta(seconds=1),
        )

    def _closing(self, account_id: uuid.UUID, key_hash: str | None) -> bool:
        """Whether a client of this key, retired (``replace``) but still in use, has its
        connection yet: a second one to the same key would overlap it. A recycled one's
        connection is dead already, and is not waited for."""
        return any(
            a == account_id and e.key_hash == key_hash and not e.recycled for a, e in self._replaced
        )

    def _held(self, account_id: uuid.UUID) -> Entry | None:
        """The account's client as this task leased it (replaced since, maybe), or else
        as the pool holds it."""
        held = _HELD.get()
        if held is not None and held[0] is self and held[1] == account_id:
            return held[2]
        return self._entries.get(account_id)

    def connection_lost(self, account_id: uuid.UUID) -> float:
        """Count a lost connection and recycle its client; the time until the next try.

        Every call in flight on a connection fails when it drops, and each reports it:
        the loss counts once, by the first report (which retires the client), and the
        backoff it starts is never replaced, so the others are deferred to its end. The
        backoff grows with the connections lost since a call last went through
        (``reconnect_backoff``), and never gives up: the jobs wait (deferred, no try
        spent) while the account shows as reconnecting.
        """
        now = time.monotonic()
        entry = self._held(account_id)
        running = self._retry_at.get(account_id, now) - now
        if running > 0 or (entry is not None and entry.retired):
            self._recycle(account_id, entry)  # counted already: only the wait is left
            return max(running, MIN_BACKOFF)
        failures = self._failures.get(account_id, 0) + 1
        self._failures[account_id] = failures
        metrics.RECONNECTS.labels(str(account_id)).inc()
        self._recycle(account_id, entry)
        delay = reconnect_backoff(failures)
        self._retry_at[account_id] = now + delay
        return delay

    def timed_out(self, account_id: uuid.UUID) -> float | None:
        """A call got no answer in time; the backoff to wait when that means a lost
        connection, or None for the job to retry on a new one.

        A connection can die without a word (a NAT or a firewall forgets it: no reset
        ever comes), and every call on it then times out, so its client is recycled: the
        retry, and every job leasing the account from then on, connects anew. A call
        still on the recycled connection that times out too waits for the new one
        (deferred, no try spent: its failure is the one already reported). When the new
        connection times out too (no call went through in between), the connection
        counts as lost (``connection_lost``): the account's jobs wait with backoff rather
        than spend their tries one timeout at a time.
        """
        now = time.monotonic()
        running = self._retry_at.get(account_id, now) - now
        entry = self._held(account_id)
        if running > 0:
            return self.connection_lost(account_id)  # the backoff running: its end
        if entry is not None and entry.recycled:  # replaced already: the next try is anew
            return MIN_BACKOFF
        if entry is None or entry.retired:  # to be closed already, for another reason
            return None
        if account_id in self._timed_out:
            return self.connection_lost(account_id)
        self._timed_out.add(account_id)
        self._recycle(account_id, entry)
        return None

    def connection_ok(self, account_id: uuid.UUID) -> None:
        """A call went through: the next loss starts the backoff from the beginning."""
        self._failures.pop(account_id, None)
        self._retry_at.pop(account_id, None)
        self._timed_out.discard(account_id)

    def _recycle(self, account_id: uuid.UUID, entry: Entry | None) -> None:
        """Replace the account's client, whose connection timed out or was lost: the
        jobs that lease the account from now on get a new one (connected anew), with what
        it had seen; the old one is closed once the calls still on it end (they can only
        fail), and no job is given it again."""
        if entry is None or entry.recycled:
            return
        entry.retired = entry.recycled = True
        self._keep_entities(account_id, entry)
        if entry.in_use and self._entries.get(account_id) is entry:
            del self._entries[account_id]
            self._replaced.append((account_id, entry))

    def retire(self, account_id: uuid.UUID, *, reason: str = "retired") -> None:
        """Disconnect this account's client as soon as no job uses it (a dead session, a
        connection made only to validate the session)."""
        entry = self._entries.get(account_id)
        if entry is not None:
            entry.retired = True
            entry.closing_reason = reason

    def replace(self, account_id: uuid.UUID, *, reason: str) -> None:
        """Retire this account's client, and give the jobs that lease the account from
        now on a new one, even while jobs keep the old one in use without a pause (a
        replaced session's key, a disconnect asked for): the old one is closed when the
        last job on it ends."""
        entry = self._entries.get(account_id)
        if entry is None:
            return
        self.retire(account_id, reason=reason)
        if entry.in_use:
            del self._entries[account_id]
            self._keep_entities(account_id, entry)
            self._replaced.append((account_id, entry))

    async def drop(self, account_id: uuid.UUID, *, reason: str) -> bool:
        """Disconnect and forget a client (unless a job is using it)."""
        entry = self._entries.get(account_id)
        if entry is None or entry.in_use:
            return False
        del self._entries[account_id]
        if not entry.recycled:  # a recycled one's were kept when it was
            self._keep_entities(account_id, entry)
        await self._close(account_id, entry, reason)
        return True

    async def _close(self, account_id: uuid.UUID, entry: Entry, reason: str) -> None:
        """Disconnect a client no longer in the pool (a recycled one's replacement may
        be: the account shows as connected while that one is)."""
        with contextlib.suppress(Exception):
            await entry.client.disconnect()
        self._count_connections()
        replaced = self.is_connected(account_id)
        if not replaced:
            metrics.account_connected(str(account_id), False)
        if entry.connected_at:  # a client leased but never connected closes no connection
            if not replaced:
                with contextlib.suppress(RedisError, OSError):
                    await self.redis.delete(presence_key(account_id))
            metrics.DISCONNECTS.labels(reason).inc()
            log.info("telegram client disconnected", account_id=str(account_id), reason=reason)
        self._record_disconnects([(account_id, entry)], reason)

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
        replaced = [(k, e) for k, e in self._replaced if match(k)]
        self._replaced = [(k, e) for k, e in self._replaced if not match(k)]
        for account_id, entry in doomed:
            del self._entries[account_id]
            self._keep_entities(account_id, entry)
        doomed += replaced
        for account_id, entry in doomed:
            with contextlib.suppress(Exception):
                await entry.client.disconnect()
            metrics.account_connected(str(account_id), False)
        self._record_disconnects(doomed, reason)
        self._count_connections()
        # Only those that had connected closed a connection (and showed one).
        closed = [a for a, e in doomed if e.connected_at]
        if closed:
            metrics.DISCONNECTS.labels(reason).inc(len(closed))
            with contextlib.suppress(RedisError, OSError):
                await self.redis.delete(*(presence_key(a) for a in closed))
            log.info("telegram clients disconnected", count=len(closed), reason=reason)
        return len(doomed)

    async def _announce(self, connected: list[tuple[uuid.UUID, Entry]]) -> None:
        """Show these clients' accounts as connected here, for PRESENCE_TTL: one trip."""
        if not connected:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            for account_id, entry in connected:
                fields = {"worker": self.worker_id, "connected_at": repr(entry.connected_at)}
                pipe.hset(presence_key(account_id), mapping=fields)
                pipe.expire(presence_key(account_id), PRESENCE_TTL)
            await pipe.execute()

    async def maintain(self) -> list[asyncio.Task[None]]:
        """One pass: refresh presence, drop lost and idle clients, start health checks.

        Answers the checks it started. They run on after it returns, at most
        ``HEALTH_CHECKS_AT_ONCE`` at a time (those due beyond wait for a later pass): a
        check waits up to the request timeout for a DC that does not answer, and the
        presence of every other connected client must be refreshed well within its TTL.
        """
        now = time.monotonic()
        entries = list(self._entries.items())
        shown: dict[uuid.UUID, Entry] = {}  # one connection per account: its own first
        for account_id, entry in self._connections():
            shown.setdefault(account_id, entry)
        for account_id in {a for a, _ in (*entries, *self._replaced)}:  # lost ones too
            metrics.account_connected(str(account_id), account_id in shown)
        with contextlib.suppress(RedisError, OSError):
            await self._announce(list(shown.items()))
        started = []
        for account_id, entry in entries:
            if entry.in_use or self._entries.get(account_id) is not entry:
                continue  # a job (or a running check) uses it, or it went meanwhile
            if not entry.client.is_connected() and entry.connected_at:  # Telethon gave up
                await self.drop(account_id, reason="lost")
            elif now - entry.last_used > self.settings.telegram_idle_seconds:
                await self.drop(account_id, reason="idle")
            elif (
                now - entry.last_health > self.settings.telegram_health_seconds
                and len(self._checks) < HEALTH_CHECKS_AT_ONCE
            ):
                started.append(self._start_check(account_id, entry))
        self._count_connections()  # connections lost in use too
        return started

    def _start_check(self, account_id: uuid.UUID, entry: Entry) -> asyncio.Task[None]:
        """Check a client's health in the background."""
        # Held from now, like a job holds it: never dropped, evicted or checked again
        # under its check; given back by the check (or by close, which cancels it).
        entry.in_use += 1
        entry.last_health = time.monotonic()
        task = asyncio.create_task(self._health_check(account_id, entry))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)
        return task

    async def _health_check(self, account_id: uuid.UUID, entry: Entry) -> None:
        """One cheap call on an idle client, made and mapped like a job's call
        (``check_health``): a flood wait recorded for it holds it back, a flood it meets
        is recorded and keeps the client, a dead session disables the account, and a
        lost or silent connection recycles the client (dropped here as unhealthy).

        The check holds the client like a job does, so a requested disconnect waits for
        it to end; a disconnect that will not wait (a hand-off, a fence) cancels the
        request under it, which counts as a failed check, not as the end of upkeep.
        """
        try:
            if not entry.client.is_connected() or entry.retired:
                return
            ok = await self.check_health(account_id, entry.tenant)
        except Exception as exc:  # tgflow's own stores: the next interval's check tries again
            raise_if_cancelling()
            log.warning(
                "health check not made", account_id=str(account_id), error=type(exc).__name__
            )
            return
        finally:
            entry.in_use -= 1
        # Recycled by its own check (a timeout, a lost connection) while the check held
        # it: replaced already, and closed here, since no lease's end will.
        await self._let_go(account_id, entry, "retired" if ok else "unhealthy")

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
        for check in list(self._checks):
            check.cancel()
        await asyncio.gather(*self._checks, return_exceptions=True)
        closed = [*self._entries.items(), *self._replaced]
        self._entries.clear()
        self._replaced = []
        for account_id, entry in closed:
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
