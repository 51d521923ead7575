"""Account control handlers (control queue)."""

from __future__ import annotations

import asyncio

from opentelemetry import trace
from telethon.sessions import StringSession

from services.worker.context import JobContext
from services.worker.telegram import accounts, replaced
from services.worker.telegram.client import own_client
from services.worker.telegram.errors import Kind, map_error
from shared import transit
from shared.errors import PermanentFailure, RetryableFailure
from shared.jobs.accounts import AccountOut, ImportParams
from shared.telegram_dcs import pin_dc

IMPORT_LOCK_MS = 90_000  # longer than an import job's timeout


async def import_session(ctx: JobContext, params: ImportParams) -> AccountOut:
    """Validate a session with one get_me, then store it sealed.

    One owner per key: a session whose auth key an active account already holds is never
    connected here (its shard's worker may have it connected right now). The tenant's
    own account is answered as it is; another tenant's is refused. Two imports of one
    key at once are serialised by a short Redis lock; the one that waits retries.
    """
    redis, secret = ctx.state.redis, ctx.state.settings.secret_key.get_secret_value()
    session = await transit.peek(redis, secret, params.session_ref)
    if session is None:
        raise PermanentFailure("session_expired", "The session handed to this job is gone.")
    fingerprint = accounts.auth_key_hash(session)
    lock = f"tgflow:import:{fingerprint}"
    if not await redis.set(lock, ctx.job_id, nx=True, px=IMPORT_LOCK_MS):
        raise RetryableFailure(
            "import_in_progress",
            "This session is being imported by another request.",
            details={"retry_after": 1},
        )
    keep = False  # the session stays parked only for a retry of this job
    try:
        if fingerprint is None:
            raise PermanentFailure("session_invalid", "The session holds no auth key.")
        await _backfill_once(ctx)
        holder = await ctx.state.db.fetchrow(
            """SELECT id, tenant_id, tg_user_id, username, state FROM accounts
               WHERE auth_key_hash = $1 AND session_ciphertext IS NOT NULL
                 AND state <> 'disabled'
               LIMIT 1""",
            fingerprint,
        )
        if holder is None:
            if await _being_logged_out(ctx, fingerprint):
                raise PermanentFailure(
                    "session_in_use",
                    "A newer session of its account replaced this one; it is being logged out.",
                )
            return _named(await _validate_and_store(ctx, session))
        if holder["tenant_id"] != ctx.tenant:
            raise PermanentFailure(
                "session_in_use", "An account of another tenant holds this session."
            )
        return _named(
            AccountOut(
                account_id=holder["id"],
                tg_user_id=holder["tg_user_id"],
                username=holder["username"],
                state=holder["state"],
            )
        )
    except RetryableFailure:
        keep = True
        raise
    finally:
        if not keep:
            await transit.drop(redis, params.session_ref)
        if await redis.get(lock) == ctx.job_id:
            await redis.delete(lock)


def _named(out: AccountOut) -> AccountOut:
    """The import's job span names the account once it is known (its validating
    requests ran before there was one to name)."""
    trace.get_current_span().set_attribute("tgflow.account.id", str(out.account_id))
    return out


async def _being_logged_out(ctx: JobContext, fingerprint: str) -> bool:
    """Whether the key is an account's replaced session, which its account's owner may
    still have connected until it has logged it out (``telegram.replaced``)."""
    found = await ctx.state.db.fetchval(
        "SELECT 1 FROM replaced_sessions WHERE auth_key_hash = $1 LIMIT 1", fingerprint
    )
    return found is not None


async def _backfill_once(ctx: JobContext) -> None:
    """Fingerprint sessions stored before fingerprints existed (once per process: every
    session stored since carries its fingerprint)."""
    runtime = ctx.state.telegram
    while not runtime.key_hashes_complete:
        done = await accounts.backfill_key_hashes(
            runtime.db, runtime.vault, runtime.unfingerprinted
        )
        runtime.key_hashes_complete = done == 0


async def _validate_and_store(ctx: JobContext, given: str) -> AccountOut:
    """Connect to the session's DC at its known address (never the one the session
    names) and store the session pointing there."""
    settings = ctx.state.settings
    pinned = StringSession(given)
    if not pin_dc(pinned, settings):
        raise PermanentFailure("session_invalid", "The session names an unknown data centre.")
    session = pinned.save()
    try:
        async with own_client(StringSession(session), settings) as client:
            me = await asyncio.wait_for(client.get_me(), settings.telegram_request_timeout)
    except Exception as exc:
        mapped = map_error(exc)
        if mapped.kind in (Kind.RETRY, Kind.RECONNECT):
            raise RetryableFailure(mapped.code, mapped.message) from exc
        if mapped.kind is Kind.DEFER:
            # Says nothing about the session: answer when to try again (as a login step
            # does), never that the session is bad, or the caller may throw it away.
            retry_after = {"retry_after": max(1, mapped.seconds)}
            raise PermanentFailure("flood_wait", mapped.message, retry_after) from exc
        raise PermanentFailure("session_invalid", "Telegram does not accept this session.") from exc
    if me is None:
        raise PermanentFailure("session_invalid", "The session is not logged in.")
    stored = await accounts.insert_active(
        ctx.state.db,
        vault=ctx.state.telegram.vault,
        tenant=ctx.tenant,
        session=session,
        me=accounts.me_fields(me, client.session.dc_id),
    )
    if stored.replaced:  # the account's owner logs the old session out
        await replaced.announce(ctx.state.redis, stored.id)
    return AccountOut(
        account_id=stored.id, tg_user_id=me.id, username=me.username, state=stored.state
    )
