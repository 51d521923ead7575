"""Abandoned logins: dropped with their half-made session once expired.

A login left at ``login_pending`` for ``telegram_login_expiry_seconds`` since its last
step goes, with its session. Most never had a sign-in go through (a code never entered,
a wrong one): they are dropped in bulk, without a word to Telegram. A login whose row
says its key may be signed in (a step sent a sign-in and never learnt its outcome, see
``tasks.login._sign_in``) holds a key that, once dropped, nobody would ever see or log
out: the worker owning the login's shard asks the key over a connection of its own
first and logs it out if it is signed in. A check that reaches no one keeps the row for
the next pass, up to ``MAX_FAILED_CHECKS`` of them.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from telethon.sessions import StringSession

from services.worker.telegram import accounts, metrics
from services.worker.telegram.client import own_client
from services.worker.telegram.runtime import TelegramRuntime
from services.worker.telegram.vault import VaultError
from shared.aio import raise_if_cancelling
from shared.logs import get_logger
from shared.telegram_dcs import pin_dc

log = get_logger(__name__)
PRUNE_BATCH = 10_000  # rows deleted per statement, so no pass holds locks for long
CHECKS_PER_PASS = 20  # a dead DC costs each check its timeouts: bounded per pass
# Passes (about a minute apart) whose check of a login reached no one before the login
# is dropped unchecked: a day of Telegram being unreachable from here outlasts its
# outages; past that, keeping the row would check nothing either, ever.
MAX_FAILED_CHECKS = 1440


async def prune(runtime: TelegramRuntime) -> int:
    """Drop expired logins, checking first the keys of this worker's shards that may be
    signed in; how many were dropped."""
    settings = runtime.settings
    rows = await runtime.db.fetch(
        """DELETE FROM accounts WHERE id IN (
               SELECT id FROM accounts
               WHERE state = 'login_pending'
                 AND updated_at < now() - make_interval(secs => $1)
                 AND NOT (login_may_be_signed_in AND session_ciphertext IS NOT NULL)
               LIMIT $2 FOR UPDATE SKIP LOCKED)
           RETURNING id, tenant_id""",
        settings.telegram_login_expiry_seconds,
        PRUNE_BATCH,
    )
    for row in rows:
        runtime.forget(row["id"])
        log.info("abandoned login dropped", account_id=str(row["id"]), tenant=row["tenant_id"])
    metrics.PRUNED.labels("abandoned_login").inc(len(rows))
    maybe = await runtime.db.fetch(
        """SELECT id FROM accounts
           WHERE state = 'login_pending' AND login_may_be_signed_in
             AND session_ciphertext IS NOT NULL
             AND updated_at < now() - make_interval(secs => $1)
           ORDER BY login_checks_failed, updated_at LIMIT $2""",
        settings.telegram_login_expiry_seconds,
        PRUNE_BATCH,
    )
    # One owner per key: the logins of this worker's shards, where their steps run. The
    # ones checked least often first, so a DC that answers nobody holds up no other.
    ours = [r["id"] for r in maybe if runtime.pool.may_connect(r["id"])]
    dropped = 0
    for account_id in ours[:CHECKS_PER_PASS]:
        try:
            dropped += await _check_and_drop(runtime, account_id)
        except Exception as exc:  # Postgres or a bug: this login waits for the next pass
            raise_if_cancelling()
            log.warning(
                "abandoned login not checked", account_id=str(account_id), error=type(exc).__name__
            )
    return len(rows) + dropped


async def _check_and_drop(runtime: TelegramRuntime, account_id: uuid.UUID) -> bool:
    """Check one expired login's key, log it out if signed in, and drop the login;
    whether it was dropped. Held like one of the login's steps (its steps and DELETE
    run on this worker, which owns its shard), with the row locked: a step on a worker
    the shard moves to meanwhile reads the row only after this check."""
    lock = runtime.login_step_lock(account_id)
    if lock.locked():  # a step or DELETE of it is running: not abandoned after all
        return False
    async with lock, runtime.db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            """SELECT * FROM accounts
               WHERE id = $1 AND state = 'login_pending' AND login_may_be_signed_in
                 AND session_ciphertext IS NOT NULL
                 AND updated_at < now() - make_interval(secs => $2)
               FOR UPDATE SKIP LOCKED""",
            account_id,
            runtime.settings.telegram_login_expiry_seconds,
        )
        if row is None or not runtime.pool.may_connect(account_id):
            return False  # taken by a step or another pass, or no longer this worker's
        if runtime.lacks_vault_key(row["session_key_id"], account_id, "abandoned login"):
            return False  # kept: dropping it could leave its key signed in, unseen
        outcome, error = await _log_out_if_signed_in(runtime, row)
        failed = row["login_checks_failed"]
        if outcome == "unreachable":
            failed = await conn.fetchval(
                """UPDATE accounts SET login_checks_failed = login_checks_failed + 1,
                       last_error = 'login_check_failed'
                   WHERE id = $1 RETURNING login_checks_failed""",
                account_id,
            )
            if failed < MAX_FAILED_CHECKS:
                await _kept(conn, row, failed, error)
                return False
            outcome = "unchecked"
        await conn.execute("DELETE FROM accounts WHERE id = $1", account_id)
    runtime.forget(account_id)
    fields = {"account_id": str(account_id), "tenant": row["tenant_id"], "key": outcome}
    if outcome == "unchecked":  # an operator's to look at: a live key may be left
        metrics.PRUNED.labels("abandoned_login_unchecked").inc()
        log.error(
            "abandoned login dropped without its key checked",
            checks_failed=failed,
            dc_id=row["dc_id"],
            error=error,
            **fields,
        )
        return True
    metrics.PRUNED.labels("abandoned_login").inc()
    if outcome == "logged_out":
        metrics.LOST_SIGN_INS.labels("prune").inc()
    log.info("abandoned login dropped", **fields)
    return True


async def _kept(conn: Any, row: Any, failed: int, error: str | None) -> None:
    """A check that reached no one: the login stays for the next pass, and says so (an
    event the first time, not at every pass)."""
    if failed == 1:
        await accounts.record_event(
            conn, row["id"], row["tenant_id"], "login_check_failed", {"error": error}
        )
    log.warning(
        "abandoned login kept: its key may be signed in and Telegram did not answer",
        account_id=str(row["id"]),
        tenant=row["tenant_id"],
        checks_failed=failed,
        error=error,
    )


async def _log_out_if_signed_in(runtime: TelegramRuntime, row: Any) -> tuple[str, str | None]:
    """Ask the login's key whose it is over a client of its own (never the pool's, which
    serves stored signed-in sessions), and ``auth.logOut`` it if signed in. What came of
    it: ``not_signed_in``, ``logged_out``, ``unreachable`` (no answer, or none that
    settles it: tried again next pass) or ``unchecked`` (the session cannot be used),
    and the error met, if any."""
    settings = runtime.settings
    account_id: uuid.UUID = row["id"]
    sealed = accounts.sealed_of(row)
    assert sealed is not None
    try:
        session = StringSession(runtime.vault.open(sealed, aad=account_id.bytes))
    except (VaultError, ValueError) as exc:  # damaged: nobody can ever connect it
        return "unchecked", type(exc).__name__
    if not pin_dc(session, settings):
        return "unchecked", "unknown_dc"
    timeout = settings.telegram_request_timeout
    try:
        async with own_client(session, settings, account_id) as client:
            # Telethon's get_me: None for a key Telegram answers is not signed in (401).
            if await asyncio.wait_for(client.get_me(), timeout) is None:
                return "not_signed_in", None
            # Telethon's log_out: False when Telegram refused it; asked again next pass.
            if await asyncio.wait_for(client.log_out(), timeout):
                return "logged_out", None
            return "unreachable", "log_out_refused"
    except Exception as exc:  # no answer, or an error that settles nothing
        raise_if_cancelling()
        return "unreachable", type(exc).__name__
