"""Background Telegram upkeep in a worker: disconnect requests and session validation."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from telethon import TelegramClient, types
from telethon.sessions import StringSession
from telethon.tl.functions.users import GetUsersRequest

from services.worker.telegram import accounts
from services.worker.telegram.accounts import DisabledReason
from services.worker.telegram.errors import Kind, map_error
from services.worker.telegram.pool import api_credentials, client_options
from services.worker.telegram.runtime import TelegramRuntime
from shared.aio import raise_if_cancelling, sleep_unless
from shared.logs import get_logger
from shared.telegram_keys import DISCONNECT_CHANNEL, presence_key

log = get_logger(__name__)


async def listen_for_disconnects(
    redis: Redis, runtime: TelegramRuntime, stop: asyncio.Event
) -> None:
    """Drop this worker's client of an account when the API asks (DELETE .../connections)."""
    while not stop.is_set():
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(DISCONNECT_CHANNEL)
            while not stop.is_set():
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
                    await _disconnect(runtime, message["data"])
        except (RedisError, OSError):
            raise_if_cancelling()
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        await sleep_unless(stop, 1.0)


async def _disconnect(runtime: TelegramRuntime, raw: str) -> None:
    try:
        account_id = uuid.UUID(raw)
    except ValueError:
        return
    if not await runtime.pool.drop(account_id, reason="requested"):
        runtime.pool.retire(account_id)  # in use: as soon as its job ends


async def validate_idle_sessions(runtime: TelegramRuntime, stop: asyncio.Event) -> None:
    """Check, about every ``telegram_validate_seconds``, this worker's idle sessions.

    Each worker validates only accounts of the shards it holds, so the check never opens
    a second connection to a key; an account counts as used once validated, so it is
    checked again one interval later.
    """
    interval = runtime.settings.telegram_validate_seconds
    while not await sleep_unless(stop, min(interval, 60.0)):
        try:
            checked = await validate_once(runtime)
            if checked:
                log.info("validated idle sessions", checked=checked)
        except Exception as exc:  # Postgres, Redis or a bug: try again next round
            raise_if_cancelling()
            log.warning("session validation skipped", error=type(exc).__name__)


async def validate_once(runtime: TelegramRuntime, *, limit: int = 500) -> int:
    """Check idle accounts of this worker's shards with one cheap call; disable dead ones."""
    rows = await runtime.db.fetch(
        """SELECT id FROM accounts WHERE state IN ('active', 'flood_wait', 'reconnecting')
             AND session_ciphertext IS NOT NULL
             AND (last_used_at IS NULL OR last_used_at < now() - make_interval(secs => $1))
           ORDER BY last_used_at NULLS FIRST LIMIT $2""",
        runtime.settings.telegram_validate_seconds,
        limit,
    )
    checked = 0
    for row in rows:
        # One owner per key: only accounts of our shards, and none connected right now.
        if not runtime.pool.may_connect(row["id"]):
            continue
        if await runtime.redis.exists(presence_key(row["id"])):
            continue
        account = await accounts.load(runtime.db, row["id"])
        if account is None or account.sealed is None:
            continue
        try:
            await _check(runtime, account)
        except Exception as exc:  # one account's trouble must not stop the others' checks
            raise_if_cancelling()
            log.warning(
                "session validation failed", account_id=str(account.id), error=type(exc).__name__
            )
        checked += 1
    return checked


async def _check(runtime: TelegramRuntime, account: accounts.Account) -> None:
    settings = runtime.settings
    assert account.sealed is not None
    try:
        session = StringSession(runtime.vault.open(account.sealed, aad=account.aad))
    except Exception as exc:  # its key is gone, or the stored value is damaged
        log.warning(
            "stored session cannot be opened", account_id=str(account.id), error=type(exc).__name__
        )
        await accounts.disable(
            runtime.db,
            account,
            DisabledReason.INVALID,
            code="session_unreadable",
            method="validation",
        )
        return
    api_id, api_hash = api_credentials(settings)
    client = TelegramClient(session, api_id, api_hash, **client_options(settings))
    try:
        await asyncio.wait_for(client.connect(), settings.telegram_request_timeout)
        request: Any = GetUsersRequest([types.InputUserSelf()])
        await asyncio.wait_for(client(request), settings.telegram_request_timeout)
        await accounts.touch(runtime.db, account.id)
    except Exception as exc:
        mapped = map_error(exc)
        if mapped.kind is Kind.DISABLE and mapped.reason is not None:
            await accounts.disable(
                runtime.db, account, mapped.reason, code=mapped.code, method="validation"
            )
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()
