"""Logging an account out, and erasing the sessions of accounts long disabled."""

from __future__ import annotations

import asyncio
import uuid

from services.worker.context import JobContext
from services.worker.tasks.login import (
    ERASED,
    log_out_unstored,
    login_client,
    one_step_at_a_time,
    open_session,
    signed_in_user,
    withdraw_code,
)
from services.worker.telegram import accounts, metrics
from services.worker.telegram.accounts import DisabledReason, State
from shared.aio import raise_if_cancelling
from shared.errors import Deferral, PermanentFailure, RetryableFailure
from shared.jobs.accounts import AccountIdParams, CleanupParams, CleanupResult, LoginStep
from shared.logs import get_logger

log = get_logger(__name__)


async def logout(ctx: JobContext, params: AccountIdParams) -> LoginStep:
    """Log the session out at Telegram (best effort) and erase it here.

    One step at a time with the account's login steps: a login step running now ends
    first (and what it stored is what is logged out), rather than meet a logout that
    connects its half-made session beside it and that it then undoes.
    """
    async with one_step_at_a_time(ctx, params.account_id):
        return await _logout(ctx, params)


async def _logout(ctx: JobContext, params: AccountIdParams) -> LoginStep:
    runtime = ctx.state.telegram
    account = await accounts.load(ctx.state.db, params.account_id, ctx.tenant)
    if account is None:
        raise PermanentFailure("account_not_found", f"No account {params.account_id}.")
    confirmed = False
    if account.state is State.LOGIN_PENDING:
        confirmed = await _cancel_login(ctx, account.id)
    elif account.sealed is not None and account.state is not State.DISABLED:
        await _drop_replaced_client(ctx, account)
        confirmed = await _log_out_at_telegram(ctx, account)
    # An account disabled already (revoked, say) is now one its owner logged out: the
    # reason says so, and health no longer counts it as a problem.
    await ctx.state.db.execute(
        f"""UPDATE accounts SET {ERASED}, login_code_hash = NULL, updated_at = now(),
               disabled_reason = CASE WHEN state = 'disabled' THEN 'logged_out'
                                      ELSE disabled_reason END
           WHERE id = $1""",  # noqa: S608
        account.id,
    )
    await accounts.set_state(
        ctx.state.db, account, State.DISABLED, reason=DisabledReason.LOGGED_OUT
    )
    await accounts.record_event(
        ctx.state.db, account.id, account.tenant, "logout", {"confirmed_by_telegram": confirmed}
    )
    runtime.forget(account.id)
    runtime.forget_seen(account.id)
    runtime.pool.retire(account.id)  # gone as soon as no job holds it
    await runtime.pool.drop(account.id, reason="logout")
    return LoginStep(account_id=account.id, state="disabled", next=None)


async def _cancel_login(ctx: JobContext, account_id: uuid.UUID) -> bool:
    """A login deleted before it finished, over its own client (never the pool's, which
    serves stored signed-in sessions). A step whose answer was lost may have signed its
    key in: that key, stored nowhere once erased here, is logged out. Otherwise the code,
    if still waiting, is withdrawn. Whether Telegram confirmed either."""
    # FOR SHARE: after a check of the key by the pruning of abandoned logins, not beside it.
    row = await ctx.state.db.fetchrow("SELECT * FROM accounts WHERE id = $1 FOR SHARE", account_id)
    if row is None or row["session_ciphertext"] is None:
        return False
    try:
        async with login_client(ctx, open_session(ctx, row), account_id) as client:
            if await signed_in_user(ctx, client) is None:
                return await withdraw_code(ctx, row, client)
            metrics.LOST_SIGN_INS.labels("delete").inc()
            log.info("deleted login found its key signed in", account_id=str(account_id))
            return await log_out_unstored(ctx, account_id, client)
    except (PermanentFailure, RetryableFailure) as exc:  # unreachable: erased all the same
        log.warning(
            "deleted login not cancelled at Telegram", account_id=str(account_id), error=exc.code
        )
        return False


async def _drop_replaced_client(ctx: JobContext, account: accounts.Account) -> None:
    """Close this worker's client of the account if it holds a session the account no
    longer stores (a login or import replaced it just now): what is logged out is the
    stored session, over a client of its own. A job still using the old client keeps it
    until it ends (its key is logged out as a replaced session then)."""
    assert account.sealed is not None
    runtime = ctx.state.telegram
    held = runtime.pool.key_of(account.id)
    if held is None:
        return
    stored = accounts.auth_key_hash(runtime.vault.open(account.sealed, aad=account.aad))
    if held == stored:
        return
    runtime.forget(account.id)
    if not await runtime.pool.drop(account.id, reason="session_replaced"):
        runtime.pool.replace(account.id, reason="session_replaced")


async def _log_out_at_telegram(ctx: JobContext, account: accounts.Account) -> bool:
    """``auth.logOut`` over the account's one connection: the pool's client, shared with
    any job using it right now, never a second client on the same key."""
    try:
        async with ctx.state.telegram.pool.lease(account) as client:
            timeout = ctx.state.settings.telegram_request_timeout
            return bool(await asyncio.wait_for(client.log_out(), timeout))
    except Deferral as exc:
        if exc.code == "session_replaced":
            # A login or import stored a new session since the account was read: erasing
            # now would leave that one signed in. The job comes back and reads it.
            ctx.state.telegram.forget(account.id)
            raise
        if exc.code in ("shard_moved", "pool_full"):
            raise  # this worker may not connect it now: the job comes back
        reason = exc.code
    except Exception as exc:  # Telegram unreachable or refusing: the session goes anyway
        raise_if_cancelling()
        reason = type(exc).__name__
    log.warning("logout not confirmed by Telegram", account_id=str(account.id), error=reason)
    return False


async def cleanup_sessions(ctx: JobContext, params: CleanupParams) -> CleanupResult:
    """Erase the sealed sessions of the tenant's accounts disabled for long enough."""
    days = params.older_than_days
    if days is None:
        days = ctx.state.settings.telegram_session_retention_days
    rows = await ctx.state.db.fetch(
        f"""UPDATE accounts SET {ERASED}, updated_at = now()
           WHERE tenant_id = $1 AND state = 'disabled' AND session_ciphertext IS NOT NULL
             AND invalid_since < now() - make_interval(days => $2)
           RETURNING id""",  # noqa: S608
        ctx.tenant,
        days,
    )
    for row in rows:
        await accounts.record_event(
            ctx.state.db, row["id"], ctx.tenant, "session_erased", {"retention_days": days}
        )
    return CleanupResult(erased=len(rows))
