"""Sessions an account no longer holds, logged out at Telegram by the account's owner.

A login or import of a user the tenant has an account for gives that account a session
of a new auth key (``accounts.insert_active``) and parks the old one, sealed, in
``replaced_sessions``. The worker holding the account's shard may have the old key
connected right now, and is the only one that may connect it: it drops its client of
the old key, so that its jobs go on with the new one, and logs the old key out, which
nobody would otherwise ever do. It is asked at once (``announce``) and also looks about
once a minute, for a request it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from telethon import errors as tg
from telethon.sessions import StringSession

from services.worker.telegram import accounts
from services.worker.telegram.client import own_client
from services.worker.telegram.runtime import TelegramRuntime
from services.worker.telegram.vault import VaultError
from shared.aio import raise_if_cancelling
from shared.logs import get_logger
from shared.telegram_dcs import pin_dc
from shared.telegram_keys import REPLACED_CHANNEL

log = get_logger(__name__)


async def announce(redis: Redis, account_id: uuid.UUID) -> None:
    """Ask the account's owner to deal with its replaced session now (best effort)."""
    with contextlib.suppress(RedisError, OSError):
        await redis.publish(REPLACED_CHANNEL, str(account_id))


async def log_out_replaced(
    runtime: TelegramRuntime, account_id: uuid.UUID | None = None, *, limit: int = 100
) -> int:
    """Log out the replaced sessions of this worker's accounts (of one, if given); how
    many of them are left. One that cannot be done now (a job still uses its old client,
    Telegram is unreachable) stays for a later pass."""
    rows = await runtime.db.fetch(
        """SELECT id, account_id FROM replaced_sessions
           WHERE $1::uuid IS NULL OR account_id = $1 ORDER BY id LIMIT $2""",
        account_id,
        limit,
    )
    left = 0
    for row in rows:
        if runtime.pool.may_connect(row["account_id"]):
            left += not await _log_out_one(runtime, row["id"], row["account_id"])
    return left


async def log_out_replaced_soon(
    runtime: TelegramRuntime, account_id: uuid.UUID, *, tries: int = 30
) -> None:
    """``log_out_replaced`` for one account, again every second while a job still uses
    its old client (a few tries; the minute's pass takes over after them)."""
    for _ in range(tries):
        if not await log_out_replaced(runtime, account_id):
            return
        await asyncio.sleep(1.0)


async def _log_out_one(runtime: TelegramRuntime, row_id: int, account_id: uuid.UUID) -> bool:
    """Whether the row is done with (logged out, found dead, taken by another pass, or
    left to a worker configured with its vault key)."""
    runtime.forget(account_id)  # this worker's jobs read the account's new session from now
    async with runtime.db.acquire() as conn, conn.transaction():
        # Locked while the key is logged out: no other pass (here or on a worker the shard
        # moves to) connects it meanwhile. Gone or locked: someone else has it.
        row = await conn.fetchrow(
            """SELECT r.*, a.auth_key_hash AS current_key FROM replaced_sessions r
               LEFT JOIN accounts a ON a.id = r.account_id
               WHERE r.id = $1 FOR UPDATE OF r SKIP LOCKED""",
            row_id,
        )
        if row is None:
            return True
        if runtime.lacks_vault_key(row["session_key_id"], account_id, "replaced"):
            return True  # kept: discarding it would leave its key signed in, unseen
        session = _open(runtime, row)
        key = accounts.auth_key_hash(session) if session is not None else None
        # This worker's client still holds the old key: closed before the key is logged
        # out, or left to the jobs running on it (the account's next jobs get a client of
        # the new key at once, however busy the old one stays) and tried again next pass.
        current = key is not None and runtime.pool.key_of(account_id) == key
        if current and not await runtime.pool.drop(account_id, reason="session_replaced"):
            runtime.pool.replace(account_id, reason="session_replaced")
        if key is not None and runtime.pool.holds_key(account_id, key):
            return False
        if session is not None and key != row["current_key"]:
            confirmed = await _log_out(runtime, account_id, session)
            if confirmed is None:
                return False  # Telegram unreachable: the next pass tries again
            await accounts.record_event(
                conn,
                account_id,
                row["tenant_id"],
                "session_replaced",
                {"confirmed_by_telegram": confirmed},
            )
        await conn.execute("DELETE FROM replaced_sessions WHERE id = $1", row_id)
    return True


def _open(runtime: TelegramRuntime, row: Any) -> str | None:
    sealed = accounts.sealed_of(row)
    assert sealed is not None
    try:
        return runtime.vault.open(sealed, aad=row["account_id"].bytes)
    except VaultError as exc:  # damaged: nothing anyone can log out any more
        log.warning(
            "replaced session cannot be opened", account_id=str(row["account_id"]), error=str(exc)
        )
        return None


async def _log_out(runtime: TelegramRuntime, account_id: uuid.UUID, session: str) -> bool | None:
    """``auth.logOut`` of the old key on a connection of its own: whether Telegram
    confirmed it (False: it refused, the key is dead already), None if unreachable."""
    settings = runtime.settings
    pinned = StringSession(session)
    if not pin_dc(pinned, settings):
        return False
    try:
        async with own_client(pinned, settings, account_id) as client:
            timeout = settings.telegram_request_timeout
            return bool(await asyncio.wait_for(client.log_out(), timeout))
    except tg.RPCError:
        return False
    except Exception as exc:
        raise_if_cancelling()
        log.warning(
            "replaced session not logged out", account_id=str(account_id), error=type(exc).__name__
        )
        return None
