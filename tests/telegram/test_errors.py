"""The Telethon error map: one row, one test; and what is not Telegram's error."""

from __future__ import annotations

import asyncio
import struct
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError
from telethon import errors as tg
from telethon.tl.functions import InvokeWithoutUpdatesRequest
from telethon.tl.functions.auth import SignInRequest

from services.sandbox.admin_client import SandboxAdmin
from services.sandbox.server import Sandbox
from services.worker.outcomes import classify
from services.worker.telegram import accounts
from services.worker.telegram.accounts import DisabledReason
from services.worker.telegram.errors import Kind, map_error
from services.worker.telegram.limits import Limits
from shared.errors import Deferral
from tests.helpers import free_port
from tests.proxy import DcProxy
from tests.telegram.conftest import close_runtime, import_account, open_runtime

SIGN_IN = InvokeWithoutUpdatesRequest(SignInRequest("15550001111", "hash", "22222"))


def rpc(cls: type[tg.RPCError], **kw: object) -> tg.RPCError:
    return cls(request=None, **kw)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("exc", "kind", "code", "extra"),
    [
        (rpc(tg.FloodWaitError, capture=42), Kind.DEFER, "flood_wait", 42),
        (rpc(tg.FloodPremiumWaitError, capture=7), Kind.DEFER, "flood_premium_wait", 7),
        (rpc(tg.SlowModeWaitError, capture=30), Kind.DEFER, "slow_mode_wait", 30),
        (rpc(tg.FloodTestPhoneWaitError, capture=9), Kind.DEFER, "flood_test_phone_wait", 9),
        (rpc(tg.TakeoutInitDelayError, capture=600), Kind.DEFER, "takeout_init_delay", 600),
        (rpc(tg.TwoFaConfirmWaitError, capture=3600), Kind.DEFER, "two_fa_confirm_wait", 3600),
        (tg.FloodError(None, "FLOOD"), Kind.DEFER, "flood", 60),  # a 420 naming no wait
        (rpc(tg.RandomIdDuplicateError), Kind.FAIL, "random_id_duplicate", None),
        (tg.ServerError(None, "INTERNAL"), Kind.RETRY, "internal", None),
        (rpc(tg.RpcCallFailError), Kind.RETRY, "rpc_call_fail", None),
        (tg.TimedOutError(None, "Timeout"), Kind.RETRY, "timeout", None),
        (TimeoutError(), Kind.RETRY, "timeout", None),
        (ConnectionResetError(), Kind.RECONNECT, "connection_reset", None),
        (ConnectionError("lost"), Kind.RECONNECT, "connection", None),
        (EOFError(), Kind.RECONNECT, "eof", None),  # a read on a connection closed under it
        (asyncio.IncompleteReadError(b"", 8), Kind.RECONNECT, "incomplete_read", None),
        (tg.InvalidBufferError(struct.pack("<i", -429)), Kind.RECONNECT, "transport_flood", None),
        (tg.BadMessageError(None, 32), Kind.RETRY, "bad_message", None),  # msg_seqno too low
        (rpc(tg.PeerIdInvalidError), Kind.FAIL, "peer_id_invalid", None),
        (rpc(tg.UsernameNotOccupiedError), Kind.FAIL, "username_not_occupied", None),
        (rpc(tg.UsernameInvalidError), Kind.FAIL, "username_invalid", None),
        (rpc(tg.ChatWriteForbiddenError), Kind.FAIL, "chat_write_forbidden", None),
        (rpc(tg.MessageTooLongError), Kind.FAIL, "message_too_long", None),
        (rpc(tg.ChannelPrivateError), Kind.FAIL, "channel_private", None),
        (rpc(tg.UserBannedInChannelError), Kind.FAIL, "user_banned_in_channel", None),
        (tg.BadRequestError(None, "SOMETHING_NEW"), Kind.FAIL, "something_new", None),
        (ValueError('No user has "ghost" as username'), Kind.FAIL, "username_not_occupied", None),
        (
            ValueError("Cannot find any entity corresponding to 5"),
            Kind.FAIL,
            "peer_not_found",
            None,
        ),
        (
            TypeError("Cannot cast InputPeerUser to any kind of InputChannel."),
            Kind.FAIL,
            "peer_not_a_channel",
            None,
        ),
        (
            rpc(tg.AuthKeyUnregisteredError),
            Kind.DISABLE,
            "auth_key_unregistered",
            DisabledReason.REVOKED,
        ),
        (rpc(tg.SessionRevokedError), Kind.DISABLE, "session_revoked", DisabledReason.REVOKED),
        (
            rpc(tg.AuthKeyDuplicatedError),
            Kind.DISABLE,
            "auth_key_duplicated",
            DisabledReason.DUPLICATED,
        ),
        (
            rpc(tg.UserDeactivatedError),
            Kind.DISABLE,
            "user_deactivated",
            DisabledReason.DEACTIVATED,
        ),
        (
            rpc(tg.UserDeactivatedBanError),
            Kind.DISABLE,
            "user_deactivated_ban",
            DisabledReason.BANNED,
        ),
    ],
)
def test_each_error_maps_to_one_outcome(
    exc: BaseException, kind: Kind, code: str, extra: object
) -> None:
    mapped = map_error(exc)
    assert (mapped.kind, mapped.code) == (kind, code)
    if kind is Kind.DEFER:
        assert mapped.seconds == extra
    if kind is Kind.DISABLE:
        assert mapped.reason == extra


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (tg.PhoneNumberFloodError(SIGN_IN), "You asked for the code too many times."),
        (tg.ChatWriteForbiddenError(SIGN_IN), "You can't write in this chat."),
        (
            tg.BadRequestError(SIGN_IN, "SOMETHING_NEW"),
            "Telegram refused the request (SOMETHING_NEW).",
        ),
        (tg.AuthKeyUnregisteredError(SIGN_IN), "The key is not registered in the system."),
    ],
)
def test_messages_say_what_telegram_refused_not_which_request_telethon_sent(
    exc: BaseException, message: str
) -> None:
    assert map_error(exc).message == message


def test_only_a_request_left_unanswered_recycles_its_connection() -> None:
    assert map_error(TimeoutError()).recycle  # no answer: the connection may be dead
    assert not map_error(tg.TimedOutError(None, "Timeout")).recycle  # Telegram answered
    assert not map_error(tg.ServerError(None, "INTERNAL")).recycle


def test_only_slow_mode_holds_a_single_chat() -> None:
    assert map_error(rpc(tg.SlowModeWaitError, capture=30)).per_peer
    assert not map_error(rpc(tg.FloodWaitError, capture=30)).per_peer


async def test_a_store_blink_inside_a_session_is_not_taken_for_telegrams_answer(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox
) -> None:
    rt = await open_runtime(sandbox, "blink-test")
    dead = Redis(port=free_port())  # nothing listens there
    try:
        imported, _ = await import_account(api, admin)
        rt.limits = Limits(dead)
        with pytest.raises(RedisError) as raised:
            async with rt.session("acme", uuid.UUID(imported["id"])) as tg:
                await tg.call("users.getUsers", lambda: tg.client.get_me())
        assert classify(raised.value).code == "store_unavailable"  # deferred, no try spent
    finally:
        await dead.aclose()
        await close_runtime(rt)


async def test_a_transport_flood_defers_the_job_and_reconnects_after_a_backoff(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox, proxy: DcProxy
) -> None:
    """Telegram's transport answers -429 instead of a frame (too many connections):
    Telethon closes the connection; the job waits, no try spent, and a new connection
    after the backoff goes through."""
    rt = await open_runtime(sandbox, "transport-flood", dc=proxy.address)
    try:
        imported, _ = await import_account(api, admin)
        account_id = uuid.UUID(imported["id"])
        async with rt.session("acme", account_id) as tg:
            await tg.call("users.getUsers", tg.client.get_me)
        proxy.flood = True
        with pytest.raises(Deferral) as deferred:
            async with rt.session("acme", account_id) as tg:
                await tg.call("users.getUsers", tg.client.get_me)
        assert deferred.value.code == "reconnecting"
        assert "-429" in deferred.value.message
        account = await accounts.load(rt.db, account_id)
        assert account is not None
        assert account.state is accounts.State.RECONNECTING
        assert rt.pool.connected() == []  # that connection is closed, not kept
        proxy.flood = False
        await asyncio.sleep((deferred.value.until - datetime.now(UTC)).total_seconds() + 0.05)
        rt.forget(account_id)
        async with rt.session("acme", account_id) as tg:
            me = await tg.call("users.getUsers", tg.client.get_me)
        assert me is not None
        assert rt.pool.connected() == [account_id]
    finally:
        await close_runtime(rt)
