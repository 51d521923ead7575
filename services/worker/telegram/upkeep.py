"""Background Telegram upkeep in a worker: disconnect requests and session validation."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

from redis.asyncio import Redis
from redis.exceptions import RedisError
from telethon import types
from telethon.sessions import StringSession
from telethon.tl.functions.users import GetUsersRequest

from services.worker.telegram import abandoned, accounts, metrics, replaced
from services.worker.telegram.abandoned import PRUNE_BATCH
from services.worker.telegram.accounts import DisabledReason
from services.worker.telegram.runtime import TelegramRuntime
from shared.aio import message_unless, raise_if_cancelling, sleep_unless
from shared.errors import Deferral, PermanentFailure, RetryableFailure
from shared.logs import get_logger
from shared.telegram_dcs import pin_dc
from shared.telegram_keys import DISCONNECT_CHANNEL, REPLACED_CHANNEL, presence_key

log = get_logger(__name__)


async def listen_for_disconnects(
    redis: Redis, runtime: TelegramRuntime, stop: asyncio.Event
) -> None:
    """Drop this worker's client of an account when the API asks (DELETE .../connections),
    and of an account's old session when a login or import replaced it."""
    replacing: set[asyncio.Task[None]] = set()  # kept referenced while they run
    while not stop.is_set():
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(DISCONNECT_CHANNEL, REPLACED_CHANNEL)
            while not stop.is_set():
                message = await message_unless(pubsub, stop, 1.0)
                if message is None:
                    continue
                if message["channel"] == REPLACED_CHANNEL:  # network calls: not in this loop
                    task = asyncio.create_task(_replaced(runtime, message["data"]))
                    replacing.add(task)
                    task.add_done_callback(replacing.discard)
                else:
                    await _disconnect(runtime, message["data"])
        except (RedisError, OSError):
            raise_if_cancelling()
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        await sleep_unless(stop, 1.0)
    for task in replacing:  # unfinished ones are left to a later pass (of whoever owns them)
        task.cancel()
    await asyncio.gather(*replacing, return_exceptions=True)


async def _replaced(runtime: TelegramRuntime, raw: str) -> None:
    try:
        account_id = uuid.UUID(raw)
    except ValueError:
        return
    try:
        await replaced.log_out_replaced_soon(runtime, account_id)
    except Exception as exc:  # the minute's pass tries again
        raise_if_cancelling()
        log.warning("replaced session not handled", account_id=raw, error=type(exc).__name__)


async def _disconnect(runtime: TelegramRuntime, raw: str) -> None:
    try:
        account_id = uuid.UUID(raw)
    except ValueError:
        return
    if not await runtime.pool.drop(account_id, reason="requested"):
        # In use: closed when its jobs end; jobs from now on connect a new client.
        runtime.pool.replace(account_id, reason="requested")


async def validate_idle_sessions(runtime: TelegramRuntime, stop: asyncio.Event) -> None:
    """Check, about every ``telegram_validate_seconds``, this worker's idle sessions.

    Each worker validates only accounts of the shards it holds, so the check never opens
    a second connection to a key; an account validated (or found connected) is checked
    again one interval later, and one used by a job within the interval not at all.
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


async def prune_forever(runtime: TelegramRuntime, stop: asyncio.Event) -> None:
    """About once a minute: drop abandoned logins and account events past retention, and
    log out replaced sessions whose owner missed the request to (``replaced``)."""
    while not await sleep_unless(stop, 60.0):
        try:
            await prune_once(runtime)
            await replaced.log_out_replaced(runtime)
        except Exception as exc:  # Postgres away or a bug: try again next round
            raise_if_cancelling()
            log.warning("account pruning skipped", error=type(exc).__name__)


async def prune_once(runtime: TelegramRuntime) -> tuple[int, int]:
    """(abandoned logins, old account events) deleted.

    A login left at ``login_pending`` for ``telegram_login_expiry_seconds`` since its last
    step is gone with its half-made session (its code has long expired), its key logged
    out first if a sign-in may have gone through (``abandoned``). Rows another worker is
    deleting at the same moment are skipped, not waited for.
    """
    logins = await abandoned.prune(runtime)
    events = 0
    while True:
        status = await runtime.db.execute(
            """DELETE FROM account_events WHERE id IN (
                   SELECT id FROM account_events
                   WHERE created_at < now() - make_interval(days => $1)
                   LIMIT $2 FOR UPDATE SKIP LOCKED)""",
            runtime.settings.telegram_event_retention_days,
            PRUNE_BATCH,
        )
        deleted = int(status.rsplit(" ", 1)[-1])
        events += deleted
        if deleted < PRUNE_BATCH:
            break
    metrics.PRUNED.labels("account_event").inc(events)
    if events:
        log.info("old account events pruned", count=events)
    return logins, events


async def validate_once(runtime: TelegramRuntime, *, limit: int = 500, page: int = 200) -> int:
    """Check up to ``limit`` idle accounts of this worker's shards with one cheap call.

    Accounts are walked by when they were last validated, a page at a time, so accounts
    this worker may not check (another shard's, or connected now) never hide the rest.
    Each one looked at is marked validated, a connected one too: a client in use is alive.
    """
    cutoff = await runtime.db.fetchval(
        "SELECT now() - make_interval(secs => $1)", runtime.settings.telegram_validate_seconds
    )
    checked = 0
    after: tuple[datetime | None, uuid.UUID] | None = None
    while checked < limit:
        rows = await runtime.db.fetch(
            """SELECT id, tenant_id, validated_at FROM accounts
               WHERE state IN ('active', 'flood_wait', 'reconnecting')
                 AND session_ciphertext IS NOT NULL
                 AND (validated_at IS NULL OR validated_at < $1)
                 AND (last_used_at IS NULL OR last_used_at < $1)
                 AND ($3::uuid IS NULL
                      OR ($2::timestamptz IS NULL AND (validated_at IS NOT NULL OR id > $3))
                      OR (validated_at, id) > ($2, $3))
               ORDER BY validated_at NULLS FIRST, id LIMIT $4""",
            cutoff,
            after[0] if after else None,
            after[1] if after else None,
            page,
        )
        if not rows:
            break
        after = (rows[-1]["validated_at"], rows[-1]["id"])
        # One owner per key: only accounts of our shards, and none connected right now.
        tenants = {r["id"]: r["tenant_id"] for r in rows if runtime.pool.may_connect(r["id"])}
        ours = list(tenants)
        connected = await _connected(runtime.redis, ours)
        await _mark_validated(runtime, list(connected))
        for account_id in ours:
            if checked >= limit:
                break
            if account_id not in connected:
                await _check_one(runtime, account_id, tenants[account_id])
                checked += 1
    return checked


async def _connected(redis: Redis, account_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    if not account_ids:
        return set()
    async with redis.pipeline(transaction=False) as pipe:
        for account_id in account_ids:
            pipe.exists(presence_key(account_id))
        found = await pipe.execute()
    return {a for a, n in zip(account_ids, found, strict=True) if n}


async def _mark_validated(runtime: TelegramRuntime, account_ids: list[uuid.UUID]) -> None:
    if account_ids:
        await runtime.db.execute(
            "UPDATE accounts SET validated_at = now() WHERE id = ANY($1::uuid[])", account_ids
        )


async def _check_one(runtime: TelegramRuntime, account_id: uuid.UUID, tenant: str) -> None:
    """Validate one account; its failures are logged and never stop the others' checks."""
    try:
        try:
            try:  # read as jobs read it, so the check's own session() finds it cached
                account: accounts.Account | None = await runtime.load_usable(tenant, account_id)
            except PermanentFailure:  # disabled, logged out or gone since it was listed
                account = None
            if account is not None and account.sealed is not None:
                await _check(runtime, account)
        finally:  # whatever the outcome, its turn comes again one interval later
            await _mark_validated(runtime, [account_id])
    except Exception as exc:
        raise_if_cancelling()
        log.warning(
            "session validation failed", account_id=str(account_id), error=type(exc).__name__
        )


async def _check(runtime: TelegramRuntime, account: accounts.Account) -> None:
    settings = runtime.settings
    assert account.sealed is not None
    if runtime.lacks_vault_key(account.sealed.key_id, account.id, "stored"):
        return
    try:
        session = StringSession(runtime.vault.open(account.sealed, aad=account.aad))
    except Exception as exc:  # the stored value is damaged
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
    if not pin_dc(session, settings):  # the address inside a session is never trusted
        await accounts.disable(
            runtime.db, account, DisabledReason.INVALID, code="session_invalid", method="validation"
        )
        return
    known = runtime.pool.holds(account.id)
    try:  # the pool's client: a job wanting the account meanwhile shares this connection
        async with runtime.session(account.tenant, account.id, quiet=True) as tg:
            request = GetUsersRequest([types.InputUserSelf()])
            await tg.call("users.getUsers", lambda: tg.client(request))
    except (PermanentFailure, RetryableFailure, Deferral) as exc:  # recorded by the runtime
        log.info("session validation found a problem", account_id=str(account.id), code=exc.code)
    finally:
        # Connected for the check: not kept past it, nor past a job that came to share it.
        if not known and not await runtime.pool.drop(account.id, reason="validated"):
            runtime.pool.retire(account.id)
