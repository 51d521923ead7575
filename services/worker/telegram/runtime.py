"""What Telegram handlers use: an account's client, with floods, budgets and errors handled."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import re
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, NoReturn, TypeVar

from asyncpg import InterfaceError, PostgresError
from redis.asyncio import Redis
from redis.exceptions import RedisError
from telethon import TelegramClient, types
from telethon.errors import RPCError
from telethon.tl.functions.users import GetUsersRequest

from services.worker.telegram import accounts, metrics
from services.worker.telegram.accounts import Account, State
from services.worker.telegram.client import ClosedUnderRequest, ConnectRefused, local_only
from services.worker.telegram.errors import Kind, Mapped, map_error
from services.worker.telegram.limits import Limits, SendBudget
from services.worker.telegram.pool import ClientPool
from services.worker.telegram.vault import Vault
from shared.aio import raise_if_cancelling, sleep_unless
from shared.config import WorkerSettings
from shared.db import Pool
from shared.errors import Deferral, PermanentFailure, RetryableFailure
from shared.jobs.envelope import utcnow
from shared.logs import get_logger
from shared.telegram_keys import stats_key

log = get_logger(__name__)
T = TypeVar("T")
ACCOUNT_CACHE_SECONDS = 2.0
DIALOG_SCAN_SECONDS = 600.0
DIALOG_SCANS_KEPT = 10_000
CONNECT_CALL = "users.getUsers"  # the one call Telethon's connect makes (get_me)
# Failures of tgflow's own stores: the worker's to classify (deferred), not Telegram's.
PASS_THROUGH = (PermanentFailure, RetryableFailure, RedisError, PostgresError, InterfaceError)


def random_id_for(job_id: str) -> int:
    """The MTProto random_id of a send: fixed by the job id, so every re-run repeats it."""
    digest = hashlib.sha256(b"tgflow-random-id:" + job_id.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class TelegramRuntime:
    def __init__(
        self, settings: WorkerSettings, db: Pool, redis: Redis, vault: Vault, worker_id: str
    ) -> None:
        self.settings = settings
        self.db = db
        self.redis = redis
        self.vault = vault
        self.limits = Limits(redis)
        self.pool = ClientPool(settings, vault, redis, worker_id, db, self.check_health)
        # Account rows read per job: cached briefly, dropped on every local state change.
        self._accounts: dict[uuid.UUID, tuple[float, Account]] = {}
        self._loading: dict[uuid.UUID, asyncio.Future[Account | None]] = {}
        # (account, +phone) -> its User, least recently used first (see tasks' _user_by_phone).
        self.phone_peers: collections.OrderedDict[tuple[uuid.UUID, str], Any] = (
            collections.OrderedDict()
        )
        # When each account's chats were last read to find an unknown numeric id.
        self._dialog_scans: collections.OrderedDict[uuid.UUID, float] = collections.OrderedDict()
        # Whether every stored session has its auth key fingerprint (see tasks.accounts).
        self.key_hashes_complete = False
        self.unfingerprinted: set[uuid.UUID] = set()  # sessions this process cannot open
        # One step at a time per login (see tasks.login): held while a step runs.
        self.login_steps: weakref.WeakValueDictionary[uuid.UUID, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        # Per-tenant call counters, flushed to Redis in batches (not one write per call).
        self._calls: collections.Counter[tuple[str, str]] = collections.Counter()

    async def _load(self, tenant: str, account_id: uuid.UUID) -> Account | None:
        cached = self._accounts.get(account_id)
        if cached is not None and time.monotonic() - cached[0] < ACCOUNT_CACHE_SECONDS:
            return cached[1] if cached[1].tenant == tenant else None
        # Jobs of one account that find the entry stale together share one read.
        loading = self._loading.get(account_id)
        if loading is None:
            loading = asyncio.ensure_future(accounts.load(self.db, account_id))
            self._loading[account_id] = loading
            loading.add_done_callback(lambda done: self._loaded(account_id, done))
        account = await asyncio.shield(loading)
        return account if account is not None and account.tenant == tenant else None

    def _loaded(self, account_id: uuid.UUID, done: asyncio.Future[Account | None]) -> None:
        failed = done.cancelled() or done.exception() is not None
        if self._loading.get(account_id) is not done:
            return  # forgotten while it was read: the row may predate a local change
        del self._loading[account_id]
        if not failed and (account := done.result()) is not None:
            self._accounts[account_id] = (time.monotonic(), account)

    def may_scan_dialogs(self, account_id: uuid.UUID) -> bool:
        """Whether a job may read the account's chats now to find a numeric id: at most
        once per DIALOG_SCAN_SECONDS, so ids that are in no chat cost one read, not one
        per job."""
        now = time.monotonic()
        last = self._dialog_scans.get(account_id)
        if last is not None and now - last < DIALOG_SCAN_SECONDS:
            return False
        self._dialog_scans[account_id] = now
        self._dialog_scans.move_to_end(account_id)
        while len(self._dialog_scans) > DIALOG_SCANS_KEPT:
            self._dialog_scans.popitem(last=False)
        return True

    def dialogs_not_scanned(self, account_id: uuid.UUID) -> None:
        """The read ``may_scan_dialogs`` allowed did not happen (a flood wait, a lost
        connection): the job's re-run may try it, rather than fail as if it had."""
        self._dialog_scans.pop(account_id, None)

    def forget_seen(self, account_id: uuid.UUID) -> None:
        """Drop what the account's clients had seen (entities, resolved phones): its
        session was logged out."""
        self.pool.forget_entities(account_id)
        for key in [k for k in self.phone_peers if k[0] == account_id]:
            del self.phone_peers[key]
        self._dialog_scans.pop(account_id, None)

    def login_step_lock(self, account_id: uuid.UUID) -> asyncio.Lock:
        """The lock a login's steps (and what else connects its half-made session here:
        its DELETE, the check before an abandoned one is dropped) hold one at a time."""
        lock = self.login_steps.get(account_id)
        if lock is None:
            lock = self.login_steps[account_id] = asyncio.Lock()
        return lock

    def forget(self, account_id: uuid.UUID) -> None:
        self._accounts.pop(account_id, None)
        self._loading.pop(account_id, None)

    def count(self, tenant: str, method: str, outcome: str) -> None:
        self._calls[(tenant, f"{method}:{outcome}")] += 1

    async def flush_counts(self) -> None:
        calls, self._calls = self._calls, collections.Counter()
        if not calls:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for (tenant, name), n in calls.items():
                    pipe.hincrby(stats_key(tenant), name, n)
                await pipe.execute()
        except (RedisError, OSError):
            raise_if_cancelling()
            self._calls.update(calls)  # keep them for the next flush

    async def run_flush(self, stop: asyncio.Event) -> None:
        while not await sleep_unless(stop, 1.0):
            await self.flush_counts()
        await self.flush_counts()

    async def load_usable(self, tenant: str, account_id: uuid.UUID) -> Account:
        account = await self._load(tenant, account_id)
        if account is None:
            raise PermanentFailure("account_not_found", f"No account {account_id} for this tenant.")
        if account.state is State.DISABLED:
            raise PermanentFailure(
                "account_disabled", f"The account is disabled ({account.disabled_reason})."
            )
        if account.state is State.LOGIN_PENDING:
            raise PermanentFailure("account_not_active", "The account has not finished logging in.")
        return account

    @contextlib.asynccontextmanager
    async def session(
        self, tenant: str, account_id: uuid.UUID, *, quiet: bool = False
    ) -> AsyncIterator[AccountSession]:
        """The account's client with its calls' outcomes handled (``quiet``: see lease).

        The client is connected by the first call that needs Telegram, once that call's
        own flood check has passed (``AccountSession.call``): a job deferred by a flood
        wait, a send budget or a slow mode, or answered from what the client knows, opens
        no connection.
        """
        account = await self.load_usable(tenant, account_id)
        async with self.pool.lease(account, quiet=quiet, connect=False) as client:
            yield AccountSession(self, account, client, quiet=quiet)

    async def connect(self, account: Account, client: TelegramClient, *, quiet: bool) -> None:
        """Connect a session's client (if it is not): what the connect meets is recorded
        and raised as the job's outcome, like a call's."""
        if not client.is_connected():  # a connect makes this call too
            until = await self.limits.flood_until(account.id, CONNECT_CALL)
            if until is not None:
                raise _flooded(CONNECT_CALL, until)
        try:
            await self.pool.connect(account, client, quiet=quiet)
        except Deferral as exc:
            if exc.code == "reconnecting":
                await accounts.set_state(self.db, account, State.RECONNECTING, error=exc.message)
                self.forget(account.id)
            elif exc.code == "session_replaced":  # read again, with the new session
                self.forget(account.id)
            raise
        except ConnectRefused as exc:  # mapped like the call it was (the client counted it)
            mapped = map_error(exc.error)
            outcome = "flood_wait" if mapped.kind is Kind.DEFER else "error"
            self.count(account.tenant, exc.method, outcome)
            await self.fail(account, exc.method, exc.error, mapped=mapped)
        except PASS_THROUGH:
            raise
        except Exception as exc:  # failures while connecting map like any call's
            await self.fail(account, "connect", exc)

    def lacks_vault_key(self, key_id: str, account_id: uuid.UUID, session: str) -> bool:
        """Whether a sealed session (``session``: which one, for the log) is sealed under a
        vault key this worker is not configured with. That is configuration, not the
        session: it is left for a worker that has the key, and said as an error."""
        if self.vault.has_key(key_id):
            return False
        log.error(
            "session sealed under a vault key that is not configured",
            account_id=str(account_id),
            key_id=key_id,
            session=session,
        )
        return True

    async def check_health(self, account_id: uuid.UUID, tenant: str) -> bool:
        """The pool's check of an idle client: one ``users.getUsers``, with the flood
        state and the error map of any call. Answers whether it went through."""
        request = GetUsersRequest([types.InputUserSelf()])
        try:
            async with self.session(tenant, account_id, quiet=True) as tg:
                await tg.call(CONNECT_CALL, lambda: tg.client(request))
        except (PermanentFailure, RetryableFailure, Deferral) as exc:  # recorded by fail()
            log.info("health check found a problem", account_id=str(account_id), code=exc.code)
            return False
        return True

    async def fail(
        self,
        account: Account,
        method: str,
        exc: BaseException,
        peer: str | None = None,
        *,
        mapped: Mapped | None = None,
    ) -> NoReturn:
        """Record what an error means for the account, then raise the job's outcome.

        ``peer``: the chat the call went to (see ``peer_key``), where a slow mode is kept.
        ``mapped``: ``map_error(exc)``, when the caller has it already.
        """
        mapped = mapped or map_error(exc)
        if not isinstance(exc, RPCError):  # Telegram's answers: counted by the client
            metrics.ERRORS.labels(str(account.id), method, mapped.code).inc()
        self.forget(account.id)
        if mapped.kind is Kind.DEFER:
            if mapped.per_peer:  # slow mode: that chat waits, the account's other chats flow
                if peer is None:  # no chat to keep it for: this job alone waits
                    until = utcnow() + timedelta(seconds=max(1, mapped.seconds))
                else:
                    until = await self.limits.record_flood(
                        account.id, method, mapped.seconds, peer=peer
                    )
                raise Deferral(mapped.code, mapped.message, until) from exc
            until = await self.limits.record_flood(account.id, method, mapped.seconds)
            if mapped.seconds >= self.settings.telegram_long_flood_seconds:
                await accounts.set_state(self.db, account, State.FLOOD_WAIT, flood_until=until)
                await accounts.record_event(
                    self.db,
                    account.id,
                    account.tenant,
                    "flood_wait",
                    {"method": method, "seconds": mapped.seconds, "until": until.isoformat()},
                )
            raise Deferral(mapped.code, mapped.message, until) from exc
        if mapped.kind is Kind.RECONNECT:
            await self._reconnecting(account, mapped, self.pool.connection_lost(account.id), exc)
        if mapped.kind is Kind.RETRY:
            if mapped.recycle and (delay := self.pool.timed_out(account.id)) is not None:
                await self._reconnecting(account, mapped, delay, exc)
            raise RetryableFailure(mapped.code, mapped.message) from exc
        if mapped.kind is Kind.DISABLE and mapped.reason is not None:
            await accounts.disable(self.db, account, mapped.reason, code=mapped.code, method=method)
            self.pool.retire(account.id)
        raise PermanentFailure(mapped.code, mapped.message) from exc

    async def _reconnecting(
        self, account: Account, mapped: Mapped, delay: float, exc: BaseException
    ) -> NoReturn:
        """The connection is lost: the account shows it, the job waits for the backoff."""
        await accounts.set_state(self.db, account, State.RECONNECTING, error=mapped.code)
        until = utcnow() + timedelta(seconds=delay)
        raise Deferral("reconnecting", mapped.message, until) from exc

    async def close(self) -> None:
        await self.flush_counts()
        await self.pool.close()


class AccountSession:
    """One job's use of one account's client."""

    def __init__(
        self,
        runtime: TelegramRuntime,
        account: Account,
        client: TelegramClient,
        *,
        quiet: bool = False,
    ) -> None:
        self.runtime = runtime
        self.account = account
        self.client = client
        self.quiet = quiet
        self.connected = False  # whether a call of this session has needed the connection

    async def call(
        self,
        method: str,
        request: Callable[[], Awaitable[T]],
        *,
        flood_checked: bool = False,
        peer: str | None = None,
    ) -> T:
        """Run one Telegram call under the shared flood state, timeout and error map.

        ``flood_checked``: the caller has just looked at this method's flood state (the
        send gate does, in the same round trip as the budget). ``peer``: the chat a send
        goes to (``peer_key``), so that a slow mode met there holds that chat only.

        A call that the client answers from what it knows (a peer it has seen) needs no
        connection: on a client not connected, it is first tried without one, and only a
        call that would send a request connects the client, then runs again.
        """
        if not self.runtime.pool.may_connect(self.account.id):
            later = utcnow() + timedelta(seconds=1)
            raise Deferral("shard_moved", "The account's shard is moving to another worker.", later)
        if not flood_checked:
            until = await self.runtime.limits.flood_until(self.account.id, method)
            if until is not None:
                raise _flooded(method, until)
        if not self.connected:
            if not self.client.is_connected():
                # What needs Telegram (or fails here) runs again, connected, as any call.
                with contextlib.suppress(Exception), local_only():
                    return await request()  # nothing reached Telegram: nothing counted
            await self.connect()
        try:  # each MTProto request inside is traced and counted (client.WorkerClient)
            try:
                async with asyncio.timeout(self.runtime.settings.telegram_request_timeout):
                    result = await request()
            except asyncio.CancelledError as cancelled:
                raise_if_cancelling()  # this task's own cancellation goes through as it is
                raise ClosedUnderRequest from cancelled
        except Exception as exc:
            if isinstance(exc, ClosedUnderRequest) and not self.runtime.pool.may_connect(
                self.account.id
            ):
                later = utcnow() + timedelta(seconds=1)
                moved = "The account's shard moved meanwhile."
                raise Deferral("shard_moved", moved, later) from exc
            mapped = map_error(exc)
            waited = mapped.kind is Kind.DEFER  # a flood or slow mode wait
            self.runtime.count(self.account.tenant, method, "flood_wait" if waited else "error")
            await self.runtime.fail(self.account, method, exc, peer, mapped=mapped)
        self.runtime.count(self.account.tenant, method, "ok")
        self.runtime.pool.connection_ok(self.account.id)
        if self._may_be_back():
            # Active again, or in the long flood wait still running (set_state decides).
            await accounts.set_state(self.runtime.db, self.account, State.ACTIVE)
            self.runtime.forget(self.account.id)
        return result

    async def connect(self) -> None:
        """The connect half of ``call``: connect the client now if no call of this session
        has (a send connects before it goes out, where a cancel still stops it)."""
        if not self.connected:
            await self.runtime.connect(self.account, self.client, quiet=self.quiet)
            self.connected = True

    def _may_be_back(self) -> bool:
        """After a call went through: reconnecting, or in a flood wait that (as far as
        this worker's copy of the row knows) has ended. A flood wait still running
        costs no write per call."""
        account = self.account
        if account.state is State.RECONNECTING:
            return True
        running = account.flood_until is not None and account.flood_until > utcnow()
        return account.state is State.FLOOD_WAIT and not running

    async def take_send_budget(self, peer: str, method: str, job_id: str) -> None:
        """Before a send: defer on a flood wait for ``method``, or when over budget (to
        the slot the job then holds: back at that time, it goes)."""
        settings = self.runtime.settings
        budget = SendBudget(
            rate=settings.telegram_send_rate,
            burst=settings.telegram_send_burst,
            peer_rate=settings.telegram_peer_send_rate,
            peer_burst=settings.telegram_peer_send_burst,
            horizon=settings.telegram_send_horizon_seconds,
        )
        wait, flooded_until = await self.runtime.limits.gate_send(
            self.account.id, peer, method, budget, job_id
        )
        if flooded_until is not None:
            raise _flooded(method, flooded_until)
        if wait > 0:
            metrics.BUDGET_WAITS.labels("send").inc()
            until = utcnow() + timedelta(seconds=wait)
            raise Deferral("send_budget", f"Paced by the send budget for {wait:.2f} s.", until)


def _flooded(method: str, until: datetime) -> Deferral:
    return Deferral("flood_wait", f"{method} is in a flood wait for this account.", until)


# What message_out shows: messages and service messages. A MessageEmpty (an id with no
# message, or None from Telethon for one) is left out.
MESSAGES = (types.Message, types.MessageService)
# Where a word starts in a CamelCase name, an acronym being one word (``SetMessagesTTL``).
_WORD_START = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
# What a message's ``media`` may hold that is no media: none, an empty one, a preview of
# a link in its text.
NOT_MEDIA = (type(None), types.MessageMediaEmpty, types.MessageMediaWebPage)


def _snake(name: str) -> str:
    """``GiveawayResults`` -> ``giveaway_results``, ``SetMessagesTTL`` -> ``set_messages_ttl``."""
    return _WORD_START.sub("_", name).lower()


def message_out(message: Any, own_user_id: int | None = None) -> dict[str, Any]:
    """A message as job results show it; ``own_user_id`` is the sender of outgoing
    private messages, which Telegram sends without a sender. A service message (a
    ``MessageService``: someone joined, the chat was created) has no text and names
    its action (``MessageActionChatAddUser`` -> ``chat_add_user``). ``media`` names the
    kind the same way (``MessageMediaGeoLive`` -> ``geo_live``); a link's preview
    (``MessageMediaWebPage``) is part of a text message, not media of its own."""
    media = None
    if not isinstance(message.media, NOT_MEDIA):
        media = _snake(type(message.media).__name__.removeprefix("MessageMedia"))
    action = None
    if message.action is not None:
        action = _snake(type(message.action).__name__.removeprefix("MessageAction"))
    return {
        "id": message.id,
        "date": message.date,
        "sender_id": message.sender_id if message.sender_id or not message.out else own_user_id,
        "text": message.message or "",
        "reply_to": message.reply_to_msg_id,
        "media": media,
        "action": action,
    }
