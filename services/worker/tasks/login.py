"""Interactive login (phone, code, 2FA password) and logout, as control jobs.

Between steps the half-made session lives sealed in the account row (state
login_pending), so each step may run on any worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from asyncpg import UniqueViolationError
from telethon import TelegramClient
from telethon import errors as tg
from telethon.sessions import StringSession
from telethon.tl.functions.auth import CancelCodeRequest
from telethon.tl.functions.users import GetUsersRequest
from telethon.tl.types import InputUserSelf

from services.worker.context import JobContext
from services.worker.telegram import accounts, metrics, replaced
from services.worker.telegram.accounts import DisabledReason, State
from services.worker.telegram.client import own_client
from services.worker.telegram.errors import Kind, Mapped, map_error
from services.worker.telegram.runtime import PASS_THROUGH
from shared import transit
from shared.aio import raise_if_cancelling
from shared.errors import PermanentFailure, RetryableFailure
from shared.jobs.accounts import (
    LoginCodeParams,
    LoginPasswordParams,
    LoginStartParams,
    LoginStep,
)
from shared.logs import get_logger

log = get_logger(__name__)
# A sealed session erased: its ciphertext, wrapped key, key id and fingerprint (SQL).
ERASED = (
    "session_ciphertext = NULL, session_wrapped_key = NULL, session_key_id = NULL,"
    " auth_key_hash = NULL"
)
# Telegram's refusals of a login step, told in the terms of whoever is logging in.
_REFUSALS = {
    "phone_number_unoccupied": "No Telegram account uses this phone number: sign it up in a"
    " Telegram app first, then start a new login.",
    "phone_number_flood": "Telegram was asked for this number's login code too many times and"
    " refuses more for a while (it does not say how long).",
    "phone_password_flood": "Too many wrong 2FA passwords were tried for this account;"
    " Telegram refuses more for a while.",
}
# Telegram's classes of answer that refuse what the request carried (not the session's
# or the server's fault): the caller's to change.
_REFUSED_INPUT = (400, 403, 406)
# The user, not the login's session, is what Telegram refuses: no new login helps either.
_USER_GONE = {
    DisabledReason.BANNED: "Telegram has banned the Telegram account of this number;"
    " it cannot be logged in.",
    DisabledReason.DEACTIVATED: "The Telegram account of this number is deleted;"
    " it cannot be logged in.",
}
# Telegram did not answer, or the connection went: nothing of the login changed here,
# whatever Telegram made of the request (the next step finds a sign-in that went through).
_SEND_AGAIN = (
    "The login is still pending: send the same request again (a sign-in that went"
    " through at Telegram meanwhile is found then)."
)
# What a sign-in step meets when Telegram signed the key in but the answer was lost: no
# answer in time, or (the connection dropped and Telethon sent the call again) the code or
# the password's challenge used up by the call that went through.
_LOST: dict[str, tuple[type[BaseException], ...]] = {
    "code": (TimeoutError, tg.PhoneCodeExpiredError),
    "password": (TimeoutError, tg.PasswordHashInvalidError, tg.SrpIdInvalidError),
}
# Telegram's answers to a step's sign-in itself that leave its key not signed in (the
# step's own lookup of the key's user, before it, found none): a wrong code, a code that
# needs the 2FA password next. (A wrong password is one of _LOST's: the key is asked.)
_REFUSED: dict[str, tuple[type[BaseException], ...]] = {
    "code": (tg.PhoneCodeInvalidError, tg.SessionPasswordNeededError),
    "password": (),
}
# What Telegram answers a call that needs a user on a key not (or not yet) signed in.
_NOT_SIGNED_IN = (tg.AuthKeyUnregisteredError, tg.SessionPasswordNeededError)


def _fresh_session(ctx: JobContext) -> StringSession:
    session = StringSession()
    if ctx.state.settings.telegram_sandbox:  # production starts from Telethon's own DC list
        host, _, port = ctx.state.settings.sandbox_dc.rpartition(":")
        session.set_dc(2, host, int(port))
    return session


@contextlib.asynccontextmanager
async def login_client(
    ctx: JobContext, session: StringSession, account_id: uuid.UUID
) -> AsyncIterator[TelegramClient]:
    try:
        async with own_client(session, ctx.state.settings, account_id) as client:
            yield client
    except PASS_THROUGH:  # our own outcomes, and tgflow's stores failing: not Telegram's
        raise
    except Exception as exc:
        mapped = map_error(exc)
        if mapped.kind in (Kind.RETRY, Kind.RECONNECT):
            raise RetryableFailure(mapped.code, f"{mapped.message} {_SEND_AGAIN}") from exc
        if mapped.kind is Kind.DEFER:
            # Someone is waiting on this login step: waiting out a flood in the queue would
            # only outlast them. Answer at once, with when to try again.
            raise PermanentFailure(
                mapped.code, mapped.message, {"retry_after": max(1, mapped.seconds)}
            ) from exc
        if mapped.kind is Kind.DISABLE:
            raise await _dead_session(ctx, account_id, mapped) from exc
        raise _refused(mapped, exc) from exc


def _refused(mapped: Mapped, exc: BaseException) -> PermanentFailure:
    """A login step Telegram refused for good. ``telegram_status`` marks a refusal of
    what the request carried (a number with no account, codes asked for too often): the
    caller's to change, unlike a dead session or Telegram's own trouble."""
    message = _REFUSALS.get(mapped.code, mapped.message)
    status = exc.code if isinstance(exc, tg.RPCError) else None
    if mapped.kind is Kind.FAIL and status in _REFUSED_INPUT:
        return PermanentFailure(mapped.code, message, {"telegram_status": status})
    return PermanentFailure(mapped.code, message)


async def _dead_session(ctx: JobContext, account_id: uuid.UUID, mapped: Mapped) -> PermanentFailure:
    """A login step Telegram answered as if the session were dead. Either way the login
    ends (its further steps could only meet the same answer): a banned or deleted user is
    told so; a session Telegram no longer knows (revoked, expired, duplicated) can only be
    replaced by a new login."""
    await _end_login(ctx, account_id, {"telegram_error": mapped.code})
    gone = _USER_GONE.get(mapped.reason) if mapped.reason is not None else None
    if gone is not None:
        return PermanentFailure(mapped.code, gone)
    return PermanentFailure(
        "login_expired",
        f"Telegram no longer knows this login's session ({mapped.code}); start a new login"
        " with POST /v1/accounts.",
    )


async def _end_login(ctx: JobContext, account_id: uuid.UUID, details: dict[str, Any]) -> None:
    """Erase a pending login's half-made session: its further steps are refused, and the
    row expires like any unfinished login."""
    ended = await ctx.state.db.fetchval(
        f"""UPDATE accounts SET {ERASED}, login_code_hash = NULL, updated_at = now()
           WHERE id = $1 AND state = 'login_pending' RETURNING id""",  # noqa: S608
        account_id,
    )
    if ended is not None:  # a first step's row does not exist yet
        await accounts.record_event(
            ctx.state.db, account_id, ctx.tenant, "login_cancelled", details
        )


async def _pending(ctx: JobContext, account_id: uuid.UUID) -> Any:
    # FOR SHARE: waits for a check of the login's key by the pruning of abandoned logins
    # (see telegram.abandoned) that holds the row, rather than connect the key beside it.
    row = await ctx.state.db.fetchrow(
        "SELECT * FROM accounts WHERE id = $1 AND tenant_id = $2 FOR SHARE",
        account_id,
        ctx.tenant,
    )
    if row is None:
        raise PermanentFailure("account_not_found", f"No account {account_id} for this tenant.")
    pending = row["state"] == State.LOGIN_PENDING.value
    if pending and row["login_attempts"] >= ctx.state.settings.telegram_login_max_attempts:
        raise _attempts_exceeded(row["login_attempts"])
    if pending and row["session_ciphertext"] is None:
        raise PermanentFailure(
            "login_not_pending", "This login was cancelled; start a new one with POST /v1/accounts."
        )
    if not pending:
        raise PermanentFailure("login_not_pending", f"The account is {row['state']}.")
    return row


def open_session(ctx: JobContext, row: Any) -> StringSession:
    sealed = accounts.sealed_of(row)
    assert sealed is not None  # _pending() only returns rows holding a session
    return StringSession(ctx.state.telegram.vault.open(sealed, aad=row["id"].bytes))


async def _save_session(ctx: JobContext, account_id: uuid.UUID, session: str, **cols: Any) -> bool:
    """Store the login's session in its row; False if the row is no longer a pending
    login (deleted meanwhile): a session is never written back into a finished account."""
    sealed = ctx.state.telegram.vault.seal(session, aad=account_id.bytes)
    sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(cols, start=6))
    status: str = await ctx.state.db.execute(
        f"""UPDATE accounts SET session_ciphertext = $2, session_wrapped_key = $3,
               session_key_id = $4, auth_key_hash = $5{", " + sets if sets else ""},
               updated_at = now()
           WHERE id = $1 AND state = 'login_pending'""",  # noqa: S608 - names are ours
        account_id,
        sealed.ciphertext,
        sealed.wrapped_key,
        sealed.key_id,
        accounts.auth_key_hash(session),
        *cols.values(),
    )
    return status.split()[-1] == "1"


async def login_start(ctx: JobContext, params: LoginStartParams) -> LoginStep:
    account_id = uuid.uuid4()
    session = _fresh_session(ctx)
    async with login_client(ctx, session, account_id) as client:
        sent = await client.send_code_request(params.phone)
        saved = session.save()
    await ctx.state.db.execute(
        "INSERT INTO tenants (id, name) VALUES ($1, $1) ON CONFLICT (id) DO NOTHING", ctx.tenant
    )
    await ctx.state.db.execute(
        """INSERT INTO accounts (id, tenant_id, phone, state, dc_id)
           VALUES ($1, $2, $3, 'login_pending', $4)""",
        account_id,
        ctx.tenant,
        params.phone,
        session.dc_id,
    )
    await _save_session(ctx, account_id, saved, login_code_hash=sent.phone_code_hash)
    await accounts.record_event(
        ctx.state.db, account_id, ctx.tenant, "login_started", {"phone": params.phone}
    )
    return LoginStep(account_id=account_id, state="login_pending", next="code")


async def signed_in_user(ctx: JobContext, client: TelegramClient) -> Any:
    """The user the login's key is signed in as, or None (``users.getUsers`` of self)."""
    request = GetUsersRequest([InputUserSelf()])
    try:
        users = await asyncio.wait_for(client(request), ctx.state.settings.telegram_request_timeout)
    except _NOT_SIGNED_IN:
        return None
    return users[0]


async def _sign_in(
    ctx: JobContext,
    row: Any,
    client: TelegramClient,
    sign_in: Callable[[], Awaitable[Any]],
    step: str,
) -> Any:
    """Run a step's sign-in; the user its key is signed in as. A sign-in whose answer is
    lost (``_LOST``) may have gone through at Telegram all the same, using up the code:
    the key is asked, and one signed in finishes the step as the answer would have. (A
    step sent again after one lost like this finds the key signed in too: Telethon's
    ``sign_in`` asks the key for its user before it signs in.)

    The row says the key may be signed in from before the sign-in is sent until an
    answer shows it is not: a step that never learns (the key's user not found out
    either, the worker gone mid-step) leaves it so, and an abandoned login marked so has
    its key checked, and logged out if signed in, before it is dropped."""
    if not await _may_be_signed_in(ctx, row["id"], True):
        # Dropped as abandoned (by any worker) since the step read it: a sign-in now would
        # make a key no row stores, and leave it signed in if its answer were lost.
        raise PermanentFailure(
            "login_not_pending",
            "This login expired and was dropped; start a new one with POST /v1/accounts.",
        )
    try:
        return await asyncio.wait_for(sign_in(), ctx.state.settings.telegram_request_timeout)
    except _REFUSED[step]:
        await _may_be_signed_in(ctx, row["id"], False)
        raise
    except _LOST[step] as exc:
        me = await signed_in_user(ctx, client)
        if me is None:
            await _may_be_signed_in(ctx, row["id"], False)
            raise
        metrics.LOST_SIGN_INS.labels(step).inc()
        log.info(
            "login step found its key signed in",
            account_id=str(row["id"]),
            step=step,
            error=type(exc).__name__,
        )
        return me


async def _may_be_signed_in(ctx: JobContext, account_id: uuid.UUID, maybe: bool) -> bool:
    """Mark a pending login's key as one a sign-in may have signed in (a sign-in sent
    moves the login's expiry, as any step), or clear the mark; whether the login is
    still pending."""
    status: str = await ctx.state.db.execute(
        """UPDATE accounts SET login_may_be_signed_in = $2,
               login_checks_failed = 0,
               updated_at = CASE WHEN $2 THEN now() ELSE updated_at END
           WHERE id = $1 AND state = 'login_pending'""",
        account_id,
        maybe,
    )
    return status.split()[-1] == "1"


async def _finish(ctx: JobContext, row: Any, client: TelegramClient, me: Any) -> LoginStep:
    session, dc_id = client.session.save(), client.session.dc_id
    # Off the network before the session is stored: from then on only the owner of the
    # shard of the account that holds it may connect it (and may log it out, if replaced).
    await client.disconnect()
    known = await ctx.state.db.fetchval(
        "SELECT id FROM accounts WHERE tenant_id = $1 AND tg_user_id = $2 AND id <> $3",
        ctx.tenant,
        me.id,
        row["id"],
    )
    if known is not None:
        return await _into_known_account(ctx, row, me, session, dc_id, client)
    fields = accounts.me_fields(me, dc_id)
    try:
        saved = await _save_session(
            ctx,
            row["id"],
            session,
            tg_user_id=me.id,
            username=fields["username"],
            first_name=fields["first_name"],
            phone=fields["phone"] or row["phone"],  # Telegram's spelling of the number
            dc_id=dc_id,
            login_code_hash=None,
            login_needs_password=False,
            login_may_be_signed_in=False,
            last_error=None,  # a failed check of the login's key, say: settled now
        )
    except UniqueViolationError:  # another login of this user finished a moment before
        return await _into_known_account(ctx, row, me, session, dc_id, client)
    if not saved:
        raise await _not_pending_any_more(ctx, row["id"], client)
    account = await accounts.load(ctx.state.db, row["id"])
    assert account is not None
    await accounts.set_state(ctx.state.db, account, State.ACTIVE)
    return LoginStep(account_id=row["id"], state="active", next=None, tg_user_id=me.id)


async def _not_pending_any_more(
    ctx: JobContext, account_id: uuid.UUID, client: TelegramClient
) -> PermanentFailure:
    """The login was deleted while its step signed in: the session it made is stored
    nowhere, so nobody else will ever connect it or log it out. It is logged out here."""
    await log_out_unstored(ctx, account_id, client)
    return PermanentFailure(
        "login_not_pending", "The login was deleted while this step ran; it is not finished."
    )


async def log_out_unstored(ctx: JobContext, account_id: uuid.UUID, client: TelegramClient) -> bool:
    """``auth.logOut`` of a login's signed-in key that no account will store, over the
    login's own client (best effort); whether Telegram confirmed it."""
    timeout = ctx.state.settings.telegram_request_timeout
    try:
        await asyncio.wait_for(client.connect(), timeout)  # nothing if connected
        return bool(await asyncio.wait_for(client.log_out(), timeout))
    except Exception as exc:
        raise_if_cancelling()
        log.warning(
            "session of a deleted login not logged out",
            account_id=str(account_id),
            error=type(exc).__name__,
        )
        return False


async def _into_known_account(
    ctx: JobContext, row: Any, me: Any, session: str, dc_id: int, client: TelegramClient
) -> LoginStep:
    """A new login of a user the tenant has an account for: the new session goes to that
    account (one account per user) and the login's own row is dropped (unless it was
    deleted meanwhile: then the session goes nowhere)."""
    claimed = await ctx.state.db.fetchval(
        "DELETE FROM accounts WHERE id = $1 AND state = 'login_pending' RETURNING id", row["id"]
    )
    if claimed is None:
        raise await _not_pending_any_more(ctx, row["id"], client)
    stored = await accounts.insert_active(
        ctx.state.db,
        vault=ctx.state.telegram.vault,
        tenant=ctx.tenant,
        session=session,
        me=accounts.me_fields(me, dc_id),
    )
    if stored.replaced:
        await replaced.announce(ctx.state.redis, stored.id)
    log.info("login merged into the known account", account_id=str(stored.id))
    return LoginStep(account_id=stored.id, state=stored.state, next=None, tg_user_id=me.id)


@contextlib.asynccontextmanager
async def one_step_at_a_time(ctx: JobContext, account_id: uuid.UUID) -> AsyncIterator[None]:
    """Hold the login's steps to one at a time. Two at once would connect its half-made
    session twice (one key, one connection) and could both try a code while one attempt
    is left; the later one reads the row again after the first has counted. Steps run on
    the account's shard, so its owner's lock is enough."""
    async with ctx.state.telegram.login_step_lock(account_id):
        yield


async def login_code(ctx: JobContext, params: LoginCodeParams) -> LoginStep:
    async with one_step_at_a_time(ctx, params.account_id):
        return await _login_code(ctx, params)


async def _login_code(ctx: JobContext, params: LoginCodeParams) -> LoginStep:
    row = await _pending(ctx, params.account_id)
    session = open_session(ctx, row)
    async with login_client(ctx, session, row["id"]) as client:
        try:
            me = await _sign_in(
                ctx,
                row,
                client,
                lambda: client.sign_in(
                    row["phone"], params.code, phone_code_hash=row["login_code_hash"]
                ),
                "code",
            )
        except tg.SessionPasswordNeededError:
            await ctx.state.db.execute(
                """UPDATE accounts SET login_needs_password = true, updated_at = now()
                   WHERE id = $1 AND state = 'login_pending'""",
                row["id"],
            )
            return LoginStep(account_id=row["id"], state="login_pending", next="password")
        except (tg.PhoneCodeInvalidError, tg.PhoneCodeExpiredError) as exc:
            await _count_attempt(ctx, row, client)
            expired = isinstance(exc, tg.PhoneCodeExpiredError)
            code = "phone_code_expired" if expired else "phone_code_invalid"
            raise PermanentFailure(code, "The login code is wrong or expired.") from exc
        return await _finish(ctx, row, client, me)


async def login_password(ctx: JobContext, params: LoginPasswordParams) -> LoginStep:
    async with one_step_at_a_time(ctx, params.account_id):
        return await _login_password(ctx, params)


async def _login_password(ctx: JobContext, params: LoginPasswordParams) -> LoginStep:
    row = await _pending(ctx, params.account_id)
    if not row["login_needs_password"]:  # the code step has not asked for one
        raise PermanentFailure(
            "password_not_expected", "The login waits for its code, not for a password."
        )
    secret = ctx.state.settings.secret_key.get_secret_value()
    password = await transit.take(ctx.state.redis, secret, params.password_ref)
    if password is None:
        raise PermanentFailure("password_expired", "The password handed to this job is gone.")
    session = open_session(ctx, row)
    async with login_client(ctx, session, row["id"]) as client:
        try:
            me = await _sign_in(
                ctx, row, client, lambda: client.sign_in(password=password), "password"
            )
        except tg.PasswordHashInvalidError as exc:
            await _count_attempt(ctx, row, client)
            raise PermanentFailure("password_invalid", "The 2FA password is wrong.") from exc
        return await _finish(ctx, row, client, me)


async def _count_attempt(ctx: JobContext, row: Any, client: TelegramClient) -> None:
    """Count a wrong code or password; the last one allowed cancels the login: its code is
    withdrawn at Telegram and its half-made session erased, and the row (kept to answer
    further steps with login_attempts_exceeded) expires like any unfinished login."""
    attempts: int = await ctx.state.db.fetchval(
        """UPDATE accounts SET login_attempts = login_attempts + 1, updated_at = now()
           WHERE id = $1 RETURNING login_attempts""",
        row["id"],
    )
    if attempts < ctx.state.settings.telegram_login_max_attempts:
        return
    await withdraw_code(ctx, row, client)
    await _end_login(ctx, row["id"], {"attempts": attempts})
    raise _attempts_exceeded(attempts)


async def withdraw_code(ctx: JobContext, row: Any, client: TelegramClient) -> bool:
    """``auth.cancelCode`` for a login still waiting for its code; whether Telegram took
    it. Best effort: the key is never used again whatever Telegram answers."""
    if not row["login_code_hash"] or row["login_needs_password"]:
        return False
    try:
        timeout = ctx.state.settings.telegram_request_timeout
        request = CancelCodeRequest(row["phone"], row["login_code_hash"])
        return bool(await asyncio.wait_for(client(request), timeout))
    except Exception as exc:
        raise_if_cancelling()
        log.info("login code not withdrawn", account_id=str(row["id"]), error=type(exc).__name__)
        return False


def _attempts_exceeded(attempts: int) -> PermanentFailure:
    return PermanentFailure(
        "login_attempts_exceeded",
        f"This login was cancelled after {attempts} wrong codes or passwords;"
        " start a new one with POST /v1/accounts.",
    )
