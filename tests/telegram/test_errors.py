"""The Telethon error map: one row, one test."""

from __future__ import annotations

import pytest
from telethon import errors as tg

from services.worker.telegram.accounts import DisabledReason
from services.worker.telegram.errors import Kind, map_error


def rpc(cls: type[tg.RPCError], **kw: object) -> tg.RPCError:
    return cls(request=None, **kw)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("exc", "kind", "code", "extra"),
    [
        (rpc(tg.FloodWaitError, capture=42), Kind.DEFER, "flood_wait", 42),
        (rpc(tg.FloodPremiumWaitError, capture=7), Kind.DEFER, "flood_premium_wait", 7),
        (rpc(tg.SlowModeWaitError, capture=30), Kind.DEFER, "slow_mode_wait", 30),
        (tg.ServerError(None, "INTERNAL"), Kind.RETRY, "internal", None),
        (rpc(tg.RpcCallFailError), Kind.RETRY, "rpc_call_fail", None),
        (tg.TimedOutError(None, "Timeout"), Kind.RETRY, "timeout", None),
        (TimeoutError(), Kind.RETRY, "timeout", None),
        (ConnectionResetError(), Kind.RECONNECT, "connection_reset", None),
        (ConnectionError("lost"), Kind.RECONNECT, "connection", None),
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
