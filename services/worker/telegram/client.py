"""The TelegramClient as workers use it: its options, tracing, and no update machinery.

tgflow's jobs ask Telegram for what they need and never consume updates. Stock Telethon
still keeps an update state per client even with ``receive_updates=False``: every
connect costs an ``updates.getState`` and an ``updates.getDifference`` (the latter can
carry every message of a busy account since its last state), each request's own result
goes through the update loop, a result whose pts runs ahead of the local state (any
account that also receives messages) makes the loop fetch ``updates.getDifference``
again, and so does every quarter of an hour without updates. ``WorkerClient`` keeps no
update state, so none of that happens; and the in-memory entity map that the update loop
alone used to trim (``get_dialogs`` fills it) is bounded by the client itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from telethon import TelegramClient, errors, functions, utils
from telethon._updates.entitycache import EntityCache
from telethon.sessions import StringSession

from services.worker.telegram import metrics
from services.worker.telegram.errors import Kind, map_error
from shared.config import WorkerSettings

tracer = trace.get_tracer("tgflow.telegram")
_NAMES: dict[type, str] = {}


def mtproto_name(request: Any) -> str:
    """A ``SendMessageRequest`` of ``functions.messages`` -> ``messages.sendMessage``."""
    kind = type(request)
    known = _NAMES.get(kind)
    if known is None:
        namespace = kind.__module__.rpartition(".")[2]
        name = kind.__name__.removesuffix("Request")
        name = name[:1].lower() + name[1:]
        known = _NAMES[kind] = name if namespace == "functions" else f"{namespace}.{name}"
    return known


class ClosedUnderRequest(ConnectionError):
    """Telethon cancels a request (or a connect) whose client is disconnected under it
    (a hand-off, a fence): a lost connection, not the caller being cancelled."""

    def __init__(self) -> None:
        super().__init__("The client was closed while a request or connect was under way.")


# How Telethon wraps a request it sends (and names it in the error Telegram answers).
_WRAPPERS = (
    functions.InvokeWithoutUpdatesRequest,
    functions.InvokeWithLayerRequest,
    functions.InitConnectionRequest,
)


def unwrapped(request: Any) -> Any:
    """The request itself, out of the envelopes Telethon sends it in."""
    while isinstance(request, _WRAPPERS):
        request = request.query
    return request


class ConnectRefused(Exception):
    """Telegram refused a request made inside a connect (Telethon's ``users.getUsers``,
    with a flood wait say). The pool has closed the connection; the error maps like a
    call's, under the method Telegram refused."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error
        request = unwrapped(getattr(error, "request", None))
        self.method = mtproto_name(request) if request is not None else "connect"


class NeedsNetwork(Exception):
    """A request was about to go to Telegram where only local answers were wanted."""


# Set (see ``local_only``) in the task whose client's requests must not go out.
_LOCAL_ONLY: ContextVar[bool] = ContextVar("tgflow_local_only", default=False)


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Within the block, this task's requests raise ``NeedsNetwork`` before being sent:
    what a ``WorkerClient`` answers from what it knows (a peer it has seen) still works."""
    token = _LOCAL_ONLY.set(True)
    try:
        yield
    finally:
        _LOCAL_ONLY.reset(token)


class _Discard(asyncio.Queue[Any]):
    """Where Telethon's sender puts updates and its own results' updates: dropped."""

    def put_nowait(self, item: Any) -> None:
        return None


class _BoundedEntities(EntityCache):  # type: ignore[misc]
    """Telethon's in-memory id -> access hash map, which only its update loop ever
    trimmed (and there is none here): at most ``limit`` entries, the oldest out first."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def extend(self, users: Any, chats: Any) -> None:
        super().extend(users, chats)
        self._trim()

    def put(self, entity: Any) -> None:
        super().put(entity)
        self._trim()

    def _trim(self) -> None:
        excess = len(self.hash_map) - self.limit
        if excess <= 0:
            return
        doomed = [k for k in itertools.islice(self.hash_map, excess + 1) if k != self.self_id]
        for key in doomed[:excess]:
            del self.hash_map[key]


# Server-side errors after which Telethon's request loop sleeps 2 s before raising,
# even on its last try (telethon/client/users.py, UserMethods._call).
_SLEPT_ON = (
    errors.ServerError,
    errors.RpcCallFailError,
    errors.RpcMcgetFailError,
    errors.InterdcCallErrorError,
    errors.TimedOutError,
    errors.InterdcCallRichErrorError,
)


# What Telethon's request loop sleeps through when short (its flood_sleep_threshold).
_FLOODS = (
    errors.FloodWaitError,
    errors.FloodPremiumWaitError,
    errors.SlowModeWaitError,
    errors.FloodTestPhoneWaitError,
)


class _Answered(Exception):
    """One of those errors, carried past Telethon's request loop unslept."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def observe(
    account_id: str, method: str, cancelled: bool, error: BaseException | None, sent: float
) -> None:
    """One request's answer: counted with its time; an error Telegram answered by its
    code, and a flood or slow mode wait with its seconds too. A request abandoned (its
    caller timed out) or lost with its connection is an error without a code here: the
    caller's error map names it."""
    metrics.observe_request(
        account_id, method, not cancelled and error is None, time.perf_counter() - sent
    )
    if isinstance(error, errors.RPCError):
        mapped = map_error(error)
        metrics.ERRORS.labels(account_id, method, mapped.code).inc()
        if mapped.kind is Kind.DEFER:
            metrics.FLOOD_WAITS.labels(account_id, method).inc()
            metrics.FLOOD_SECONDS.labels(account_id, method).inc(mapped.seconds)


class _RaiseAtOnce:
    """The sender as Telethon's request loop sees it: a single request's server error
    comes out wrapped, so the loop raises it at once instead of sleeping 2 s first. The
    job's retry policy decides when to try again; the sleep only held a job slot (and
    outlasted any request timeout under 2 s).

    Each request it sends is counted when its answer arrives (``observe``): what
    Telegram received, not what callers asked for (a lookup Telethon answers from its
    cache sends nothing), and a flood wait before Telethon decides to sleep through it.
    """

    def __init__(self, sender: Any, account_id: str, method: str, sleeps: float | None) -> None:
        self.sender = sender
        self.account_id = account_id
        self.method = method
        self.sleeps = sleeps  # the caller's flood_sleep_threshold, if it gave one

    def _unslept(self, error: BaseException) -> bool:
        """Whether Telethon must raise ``error`` at once: a server error, or a flood
        longer than the caller's own threshold (Telethon's loop only knows the client's)."""
        if isinstance(error, _SLEPT_ON):
            return True
        if self.sleeps is None or not isinstance(error, _FLOODS):
            return False
        return max(1, getattr(error, "seconds", 0)) > self.sleeps

    def send(self, request: Any, ordered: bool = False) -> Any:
        inner = self.sender.send(request, ordered=ordered)
        if isinstance(inner, list):  # several at once: Telethon's own handling
            return inner
        outer = inner.get_loop().create_future()
        sent = time.perf_counter()

        def settle(done: asyncio.Future[Any]) -> None:
            error = None if done.cancelled() else done.exception()
            if self.account_id:  # none yet: an import's requests, before it stores one
                observe(self.account_id, self.method, done.cancelled(), error, sent)
            if outer.done():
                return
            if done.cancelled():
                outer.cancel()
                return
            if error is None:
                outer.set_result(done.result())
            else:
                outer.set_exception(_Answered(error) if self._unslept(error) else error)

        def forward_cancel(done: asyncio.Future[Any]) -> None:
            if done.cancelled():
                inner.cancel()

        inner.add_done_callback(settle)
        outer.add_done_callback(forward_cancel)
        return outer


class WorkerClient(TelegramClient):  # type: ignore[misc]
    """A TelegramClient that traces each MTProto request and keeps no update state.

    Each request is a span named by its method and carrying the account id (never the
    session). The span wraps Telethon's ``_call``, the path every request takes (those
    Telethon sends inside a higher-level method too, each page of ``get_dialogs`` say),
    so a retry after a short flood sleep stays in its request's span; the request
    metrics count each one sent there, when its answer arrives (``_RaiseAtOnce``). The
    one request that bypasses it, the connect's ``help.getConfig`` (sent inside
    ``initConnection`` straight to the sender), has its span and is counted in
    ``_traced_init``.
    """

    def __init__(self, *args: Any, account_id: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.account_id = account_id
        sink = _Discard()
        self._updates_queue = sink
        self._sender._updates_queue = sink
        self._sender.send = self._traced_init(self._sender.send)
        self._mb_entity_cache = _BoundedEntities(self._entity_cache_limit)

    def _span_attributes(self, method: str) -> dict[str, str]:
        return {"rpc.system": "mtproto", "rpc.method": method, "tgflow.account.id": self.account_id}

    def _traced_init(self, send: Callable[..., Any]) -> Callable[..., Any]:
        """The sender's ``send``, tracing the request a connect hands it directly
        (``invokeWithLayer(initConnection(help.getConfig))``) as ``help.getConfig``: a
        span under the current one (the job's, when a job connects), ended when Telegram
        answers, and the request counted then like any other (``observe``), an answer
        refusing it by its error code. Every other request passes untouched (``_call``
        traces it)."""

        def traced(request: Any, ordered: bool = False) -> Any:
            if not isinstance(request, functions.InvokeWithLayerRequest):
                return send(request, ordered=ordered)
            method = mtproto_name(unwrapped(request))
            span = tracer.start_span(
                f"telegram {method}", kind=SpanKind.CLIENT, attributes=self._span_attributes(method)
            )
            try:
                answer = send(request, ordered=ordered)
            except Exception as exc:
                _end_span(span, exc)
                raise
            sent = time.perf_counter()

            def settle(done: asyncio.Future[Any]) -> None:
                error = None if done.cancelled() else done.exception()
                if self.account_id:  # counted like any request (see ``_RaiseAtOnce``)
                    observe(self.account_id, method, done.cancelled(), error, sent)
                _end_span(span, error)

            answer.add_done_callback(settle)
            return answer

        return traced

    async def _on_login(self, user: Any) -> Any:
        """At connect or sign-in: remember who we are, but fetch no update state."""
        self._mb_entity_cache.set_self_user(user.id, user.bot, user.access_hash)
        self._authorized = True
        return user

    def known_peer(self, peer: str | int) -> Any | None:
        """The InputPeer of ``peer`` (an @username, a marked id, ...) as this client has
        seen it, in memory or in its session, found without the network; None when it
        has not seen it. These are the steps ``get_input_entity`` takes before it would
        ask Telegram, so a caller may skip the flood state of what it would have asked."""
        if isinstance(peer, int):
            cached = self._mb_entity_cache.get(utils.get_peer_id(peer, add_mark=False))
            if cached is not None:
                return cached._as_input_peer()
        try:
            return self.session.get_input_entity(peer)
        except ValueError:
            return None

    async def __call__(
        self, request: Any, ordered: bool = False, flood_sleep_threshold: Any = None
    ) -> Any:
        """Send a request (Telethon's higher-level methods send theirs here too).

        ``flood_sleep_threshold``: the longest flood wait slept through for this request
        (Telethon's own ``__call__`` drops it, and its loop then uses the client's); 0
        for none, so that a flood comes back to the caller at once."""
        if _LOCAL_ONLY.get():
            raise NeedsNetwork
        return await self._call(self._sender, request, ordered, flood_sleep_threshold)

    async def _call(
        self, sender: Any, request: Any, ordered: bool = False, flood_sleep_threshold: Any = None
    ) -> Any:
        if isinstance(request, list | tuple):  # several at once: named together
            method = ",".join(mtproto_name(r) for r in request)
        else:
            method = mtproto_name(request)
        with tracer.start_as_current_span(
            f"telegram {method}",
            kind=SpanKind.CLIENT,
            attributes=self._span_attributes(method),
        ):
            try:
                return await super()._call(
                    _RaiseAtOnce(sender, self.account_id, method, flood_sleep_threshold),
                    request,
                    ordered,
                    flood_sleep_threshold,
                )
            except _Answered as answered:
                raise answered.error from None


def _end_span(span: Span, error: BaseException | None) -> None:
    """End a request's span, failed as ``start_as_current_span`` fails one."""
    if isinstance(error, Exception):
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.end()


def client_options(settings: WorkerSettings) -> dict[str, Any]:
    """Telethon settings chosen for a job runner rather than an interactive app.

    receive_updates off: Telegram pushes nothing to a worker's clients (and
    ``WorkerClient`` keeps no update state). A small flood_sleep_threshold: long flood
    waits go back to the queue, not to a sleeping coroutine holding a job slot. One quick
    connection and request retry: the job's own retry policy and the reconnect backoff
    own the waiting; when that retry fails too, the server's own error is raised (not
    Telethon's generic ValueError), so the error map sees the flood or server error it
    was. The entity cache in memory is bounded, and so is the session's own store
    (``BoundedSession``), so memory per account stays flat however many users its jobs
    see.
    """
    return {
        "receive_updates": False,
        "flood_sleep_threshold": settings.telegram_flood_sleep_threshold,
        "request_retries": 1,
        "raise_last_call_error": True,
        "connection_retries": 1,
        "retry_delay": 0,
        "auto_reconnect": True,
        "timeout": settings.telegram_request_timeout,
        "entity_cache_limit": settings.telegram_entities_per_account,
        "device_model": "tgflow",
        "app_version": "tgflow 0.1",
    }


def api_credentials(settings: WorkerSettings) -> tuple[int, str]:
    if settings.telegram_sandbox:
        from services.sandbox.client import TEST_API_HASH, TEST_API_ID, register_sandbox_key

        register_sandbox_key()  # sandbox mode only: trust the local DC's RSA key
        return TEST_API_ID, TEST_API_HASH
    api_id, api_hash = settings.telegram_api_id, settings.telegram_api_hash
    assert api_id is not None
    assert api_hash is not None
    return api_id, api_hash.get_secret_value()


def new_client(
    session: StringSession, settings: WorkerSettings, account_id: uuid.UUID | None = None
) -> WorkerClient:
    """A client with tgflow's options for a session (login, import)."""
    api_id, api_hash = api_credentials(settings)
    return WorkerClient(
        session,
        api_id,
        api_hash,
        account_id=str(account_id) if account_id else "",
        **client_options(settings),
    )


@contextlib.asynccontextmanager
async def own_client(
    session: StringSession, settings: WorkerSettings, account_id: uuid.UUID | None = None
) -> AsyncIterator[WorkerClient]:
    """A client of its own on ``session`` (never the pool's: a login's half-made key, a
    replaced or abandoned one, one being imported), connected within the request
    timeout and disconnected when the block ends, however it ends."""
    client = new_client(session, settings, account_id)  # its requests' spans name the account
    try:
        await asyncio.wait_for(client.connect(), settings.telegram_request_timeout)
        yield client
    finally:
        await client.disconnect()
