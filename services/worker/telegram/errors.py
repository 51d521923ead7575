"""Every Telethon error a job can meet, mapped once to an outcome.

defer: wait, then run again without spending a try (flood waits, every other 420 that
       names a wait, and slow-mode waits, which hold only the chat they came from);
reconnect: the connection is gone (or Telegram's transport asked to back off): mark the
           account reconnecting and defer its jobs with backoff, never failing them for it;
retry: transient, with backoff (server errors, timeouts, a message Telegram rejected); a
       request that got no answer in time recycles its client too (``recycle``);
disable: the session is dead (revoked, duplicated, deactivated, banned): disable the
         account, fail the job with that code and raise an alert-worthy event;
fail: anything else the server refused, with a stable snake_case code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from telethon import errors as tg

from services.worker.telegram.accounts import DisabledReason


class Kind(StrEnum):
    DEFER = "defer"
    RECONNECT = "reconnect"
    RETRY = "retry"
    DISABLE = "disable"
    FAIL = "fail"


@dataclass(frozen=True)
class Mapped:
    kind: Kind
    code: str
    message: str
    seconds: int = 0
    reason: DisabledReason | None = None
    per_peer: bool = False  # the wait holds one chat, not the method everywhere
    # No answer came in time: the connection may have died without a word (a NAT or a
    # firewall forgot it, and no reset ever comes), so the next try needs a new one.
    recycle: bool = False


DISABLING: dict[type[BaseException], DisabledReason] = {
    tg.AuthKeyUnregisteredError: DisabledReason.REVOKED,
    tg.SessionRevokedError: DisabledReason.REVOKED,
    tg.SessionExpiredError: DisabledReason.REVOKED,
    tg.AuthKeyDuplicatedError: DisabledReason.DUPLICATED,
    tg.UserDeactivatedBanError: DisabledReason.BANNED,
    tg.UserDeactivatedError: DisabledReason.DEACTIVATED,
    tg.AuthKeyInvalidError: DisabledReason.INVALID,
    tg.AuthKeyPermEmptyError: DisabledReason.INVALID,
    tg.AuthKeyNotFound: DisabledReason.INVALID,
}

# Every 420 (FLOOD_WAIT_X, FLOOD_PREMIUM_WAIT_X, FLOOD_TEST_PHONE_WAIT_X, TAKEOUT_INIT_DELAY_X,
# 2FA_CONFIRM_WAIT_X, a bare FLOOD) and slow mode (a 400) ask for a wait.
WAITS: tuple[type[BaseException], ...] = (tg.FloodError, tg.SlowModeWaitError)
UNNAMED_WAIT_SECONDS = 60  # a 420 that names no wait

# Telegram answered, but not with a result: the request may be sent again as it is.
TRANSIENT: tuple[type[BaseException], ...] = (
    tg.ServerError,
    tg.RpcCallFailError,
    tg.RpcMcgetFailError,
    tg.TimedOutError,
    tg.BadMessageError,  # the message was rejected (a time or sequence skew), not the call
)

# The connection is gone; an EOFError (asyncio.IncompleteReadError is one) is how a
# read on a connection closed under it ends, when Telethon's own reconnect failed too.
DISCONNECTED: tuple[type[BaseException], ...] = (ConnectionError, OSError, EOFError)
TRANSPORT_FLOOD = 429  # the transport's -429 instead of a frame: too many connections


def code_of(exc: BaseException) -> str:
    """A stable snake_case code, from the specific error class when Telethon has one.

    Telethon's specific errors carry only their HTTP-like category in ``message``
    (AuthKeyUnregisteredError says UNAUTHORIZED), so the class name is the better code;
    an error Telethon has no class for keeps the server's name (``SOME_NEW_ERROR``).
    """
    generic = type(exc).__module__ == "telethon.errors.rpcbaseerrors"
    message = getattr(exc, "message", None)
    if generic and isinstance(message, str) and message:
        return re.sub(r"_\d+$|_X$", "", message).lower()
    name = type(exc).__name__.removesuffix("Error")
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def telegram_says(exc: BaseException) -> str:
    """An error in a sentence for people: Telethon's description of an RPC error without
    the request it names (``... (caused by InvokeWithoutUpdatesRequest(SignInRequest))``),
    or the error's own name where Telethon has no description."""
    if not isinstance(exc, tg.RPCError):
        return str(exc)
    if type(exc).__module__ == "telethon.errors.rpcbaseerrors":
        return f"Telegram refused the request ({exc.message})."
    text = str(exc).partition(" (caused by ")[0].strip()
    return text if text.endswith(".") else f"{text}."


def map_error(exc: BaseException) -> Mapped:
    """The outcome for one exception raised by a Telegram call."""
    for kind, reason in DISABLING.items():
        if isinstance(exc, kind):
            return Mapped(Kind.DISABLE, code_of(exc), telegram_says(exc), reason=reason)
    if isinstance(exc, WAITS):
        named = getattr(exc, "seconds", None)
        seconds = UNNAMED_WAIT_SECONDS if named is None else int(named)
        per_peer = isinstance(exc, tg.SlowModeWaitError)
        text = f"Telegram asks to wait {seconds} s" + (" in this chat." if per_peer else ".")
        return Mapped(Kind.DEFER, code_of(exc), text, seconds, per_peer=per_peer)
    if isinstance(exc, tg.RandomIdDuplicateError):  # a 500, but resending repeats it
        text = "Telegram already has a message with this job's random_id; it is not sent again."
        return Mapped(Kind.FAIL, code_of(exc), text)
    if isinstance(exc, TimeoutError):  # before DISCONNECTED: a TimeoutError is an OSError
        return Mapped(Kind.RETRY, "timeout", "Telegram did not answer in time.", recycle=True)
    if isinstance(exc, TRANSIENT):
        return Mapped(Kind.RETRY, code_of(exc), f"{type(exc).__name__}: {exc}")
    if isinstance(exc, tg.InvalidBufferError) and exc.code == TRANSPORT_FLOOD:
        # Telethon has closed the connection: a new one, after a backoff.
        text = "Telegram's transport asked to slow down (-429); reconnecting with backoff."
        return Mapped(Kind.RECONNECT, "transport_flood", text)
    if isinstance(exc, DISCONNECTED):
        return Mapped(Kind.RECONNECT, code_of(exc), f"{type(exc).__name__}: {exc}")
    unresolved = _unresolved_peer(exc)
    if unresolved is not None:
        return unresolved
    if isinstance(exc, tg.RPCError):
        return Mapped(Kind.FAIL, code_of(exc), telegram_says(exc))
    return Mapped(Kind.FAIL, "telegram_error", f"{type(exc).__name__}: {exc}")


def _unresolved_peer(exc: BaseException) -> Mapped | None:
    """Telethon's own failures to resolve a peer, before any request."""
    text = str(exc)
    if isinstance(exc, ValueError):
        if "as username" in text:
            return Mapped(Kind.FAIL, "username_not_occupied", text)
        if "entity" in text.lower():
            return Mapped(Kind.FAIL, "peer_not_found", text)
    if isinstance(exc, TypeError) and "InputChannel" in text:
        # Telethon could not make the peer a channel (a user, a basic group).
        return Mapped(Kind.FAIL, "peer_not_a_channel", "The peer is not a supergroup or channel.")
    return None
