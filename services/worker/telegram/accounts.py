"""Accounts as the worker sees them: sealed sessions, health state and events.

Workers own every write. A state change and its event row commit together.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from telethon.crypto import AuthKey
from telethon.sessions import StringSession

from services.worker.telegram.vault import Sealed, Vault, VaultError
from shared.db import Pool
from shared.jobs.envelope import utcnow
from shared.logs import get_logger

log = get_logger(__name__)


class State(StrEnum):
    LOGIN_PENDING = "login_pending"
    ACTIVE = "active"
    FLOOD_WAIT = "flood_wait"
    RECONNECTING = "reconnecting"
    DISABLED = "disabled"


class DisabledReason(StrEnum):
    REVOKED = "revoked"
    DUPLICATED = "duplicated"
    DEACTIVATED = "deactivated"
    BANNED = "banned"
    INVALID = "invalid"
    LOGGED_OUT = "logged_out"


# Which health states may follow which. "disabled" is left only by a new login or import
# (``insert_active``), never here: a call that went through on a stale copy of the
# account (read before it was disabled) says nothing about the session now.
ALLOWED: dict[State, frozenset[State]] = {
    State.LOGIN_PENDING: frozenset({State.ACTIVE, State.DISABLED}),
    State.ACTIVE: frozenset({State.FLOOD_WAIT, State.RECONNECTING, State.DISABLED}),
    State.FLOOD_WAIT: frozenset({State.ACTIVE, State.RECONNECTING, State.DISABLED}),
    State.RECONNECTING: frozenset({State.ACTIVE, State.FLOOD_WAIT, State.DISABLED}),
    State.DISABLED: frozenset(),
}


@dataclass(frozen=True)
class Account:
    id: uuid.UUID
    tenant: str
    state: State
    disabled_reason: str | None
    flood_until: datetime | None
    sealed: Sealed | None
    tg_user_id: int | None

    @property
    def aad(self) -> bytes:
        return self.id.bytes


def auth_key_hash(session: str) -> str | None:
    """A stable fingerprint of the auth key inside a string session (None without one).

    Stored beside the sealed session so that two sessions holding one key can be told
    apart from two different keys without connecting either.
    """
    return key_fingerprint(StringSession(session).auth_key)


def key_fingerprint(key: AuthKey | None) -> str | None:
    """``auth_key_hash`` of a session's auth key itself (None without one)."""
    if key is None or key.key is None:
        return None
    return hashlib.sha256(b"tgflow-auth-key:" + key.key).hexdigest()[:32]


async def backfill_key_hashes(
    db: Pool, vault: Vault, unreadable: set[uuid.UUID], *, limit: int = 1000
) -> int:
    """Fingerprint sessions stored before fingerprints were kept (a bounded batch); how
    many rows it went through.

    A session this process cannot open (its vault key is not configured, or it is
    damaged) joins ``unreadable`` and is passed over from then on, so that one such row
    cannot hold up every import; a process started with the key back fingerprints it.
    """
    rows = await db.fetch(
        """SELECT id, session_ciphertext, session_wrapped_key, session_key_id FROM accounts
           WHERE auth_key_hash IS NULL AND session_ciphertext IS NOT NULL
             AND NOT (id = ANY($2::uuid[]))
           LIMIT $1""",
        limit,
        list(unreadable),
    )
    for row in rows:
        sealed = sealed_of(row)
        assert sealed is not None
        try:
            session = vault.open(sealed, aad=row["id"].bytes)
        except VaultError as exc:
            unreadable.add(row["id"])
            log.warning("session not fingerprinted", account_id=str(row["id"]), error=str(exc))
            continue
        await db.execute(
            "UPDATE accounts SET auth_key_hash = $2 WHERE id = $1",
            row["id"],
            auth_key_hash(session) or "",
        )
    return len(rows)


def sealed_of(row: Any) -> Sealed | None:
    """The sealed session stored in an ``accounts`` row, if it has one."""
    if row["session_ciphertext"] is None:
        return None
    return Sealed(
        row["session_key_id"], bytes(row["session_wrapped_key"]), bytes(row["session_ciphertext"])
    )


def _row_to_account(row: Any) -> Account:
    return Account(
        id=row["id"],
        tenant=row["tenant_id"],
        state=State(row["state"]),
        disabled_reason=row["disabled_reason"],
        flood_until=row["flood_until"],
        sealed=sealed_of(row),
        tg_user_id=row["tg_user_id"],
    )


async def load(db: Pool, account_id: uuid.UUID, tenant: str | None = None) -> Account | None:
    row = await db.fetchrow(
        """SELECT id, tenant_id, state, disabled_reason, flood_until, session_ciphertext,
                  session_wrapped_key, session_key_id, tg_user_id
           FROM accounts WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)""",
        account_id,
        tenant,
    )
    return _row_to_account(row) if row else None


EventRow = tuple[uuid.UUID, str, str, dict[str, Any]]  # account id, tenant, kind, details


async def record_event(
    db: Pool | Any, account_id: uuid.UUID, tenant: str, kind: str, details: dict[str, Any]
) -> None:
    await record_events(db, [(account_id, tenant, kind, details)])


async def record_events(db: Pool | Any, events: list[EventRow]) -> None:
    """Write a batch of events at once; events of accounts deleted meanwhile are dropped."""
    await db.executemany(
        """INSERT INTO account_events (account_id, tenant_id, kind, details)
           SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM accounts WHERE id = $1)""",
        events,
    )


async def set_state(
    db: Pool,
    account: Account,
    state: State,
    *,
    reason: DisabledReason | None = None,
    flood_until: datetime | None = None,
    error: str | None = None,
) -> bool:
    """Move an account to ``state`` if allowed; record the change as an event.

    ``flood_until`` is the end of the account's longest flood wait running: a new one
    never shortens it, and it stays through a spell of ``reconnecting`` (it is cleared
    only on the way back to ``active``). An account already in ``flood_wait`` that meets
    a longer flood has its end moved later (no state change, so no event: the caller
    records the flood itself). An account asked back to ``active`` from ``flood_wait`` or
    ``reconnecting`` while that end is still ahead goes to (or stays in) ``flood_wait``:
    the row read here, not a caller's cached copy, decides.
    """
    async with db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT state, flood_until FROM accounts WHERE id = $1 FOR UPDATE", account.id
        )
        if row is None:
            return False
        before, running = State(row["state"]), row["flood_until"]
        if (
            state is State.ACTIVE
            and before in (State.FLOOD_WAIT, State.RECONNECTING)
            and running is not None
            and running > utcnow()
        ):
            state = State.FLOOD_WAIT  # back, but a long flood wait is still running
        if flood_until is None:
            if state is not State.ACTIVE:
                flood_until = running
        elif running is not None:
            flood_until = max(flood_until, running)
        if before == state:
            if state is State.FLOOD_WAIT and flood_until != running:
                await conn.execute(
                    "UPDATE accounts SET flood_until = $2, updated_at = now() WHERE id = $1",
                    account.id,
                    flood_until,
                )
            return False
        if state not in ALLOWED[before]:
            return False
        await conn.execute(
            """UPDATE accounts SET state = $2, disabled_reason = $3, flood_until = $4,
                   last_error = COALESCE($5, last_error),
                   invalid_since = CASE WHEN $2 = 'disabled' THEN now() ELSE NULL END,
                   updated_at = now()
               WHERE id = $1""",
            account.id,
            state.value,
            reason.value if reason else None,
            flood_until,
            error,
        )
        details: dict[str, Any] = {"from": before.value, "to": state.value}
        if reason:
            details["reason"] = reason.value
        if flood_until:
            details["until"] = flood_until.isoformat()
        if error:
            details["error"] = error
        await record_event(conn, account.id, account.tenant, "state_change", details)
    log.info("account state changed", account_id=str(account.id), **details)
    return True


def e164(phone: str | None) -> str | None:
    """A phone as accounts store it: E.164 with its ``+``, as logins are started with
    (Telegram gives the digits alone)."""
    digits = (phone or "").strip().lstrip("+")
    return f"+{digits}" if digits else None


def me_fields(me: Any, dc_id: int | None) -> dict[str, Any]:
    """What an account keeps of its logged-in user (Telethon's ``get_me``), refreshed
    whenever a login or import renews it."""
    return {
        "id": me.id,
        "username": me.username,
        "first_name": me.first_name,
        "phone": e164(me.phone),
        "dc_id": dc_id,
    }


@dataclass(frozen=True)
class Stored:
    id: uuid.UUID
    # The account held a session of another auth key, now in replaced_sessions: the
    # account's shard owner is to drop its client of that key and log the key out.
    replaced: bool = False
    state: State = State.ACTIVE  # flood_wait while a flood wait of its user still runs


async def insert_active(
    db: Pool,
    *,
    vault: Vault,
    tenant: str,
    session: str,
    me: dict[str, Any],
) -> Stored:
    """Store a validated session as an active account; the same Telegram user updates it.

    The session is sealed with the id of the row that finally holds it (the account id is
    bound into the ciphertext), also when a concurrent import of the same user wins. The
    session it replaces, if of another key, moves to ``replaced_sessions`` in the same
    transaction (see ``telegram.replaced``).
    """
    fingerprint = auth_key_hash(session)
    replaced, state = False, State.ACTIVE
    async with db.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO tenants (id, name) VALUES ($1, $1) ON CONFLICT (id) DO NOTHING", tenant
        )
        new_id = uuid.uuid4()
        sealed = vault.seal(session, aad=new_id.bytes)
        stored: uuid.UUID | None = await conn.fetchval(
            """INSERT INTO accounts (id, tenant_id, phone, tg_user_id, username, first_name,
                   dc_id, state, session_ciphertext, session_wrapped_key, session_key_id,
                   auth_key_hash)
               VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', $8, $9, $10, $11)
               ON CONFLICT (tenant_id, tg_user_id) WHERE tg_user_id IS NOT NULL DO NOTHING
               RETURNING id""",
            new_id,
            tenant,
            me.get("phone"),
            me["id"],
            me.get("username"),
            me.get("first_name"),
            me.get("dc_id"),
            sealed.ciphertext,
            sealed.wrapped_key,
            sealed.key_id,
            fingerprint,
        )
        if stored is None:  # this user is known: re-seal for the existing row and update it
            known = await conn.fetchrow(
                """SELECT id, state, session_ciphertext, auth_key_hash FROM accounts
                   WHERE tenant_id = $1 AND tg_user_id = $2 FOR UPDATE""",
                tenant,
                me["id"],
            )
            assert known is not None
            stored = known["id"]
            assert stored is not None
            replaced = known["session_ciphertext"] is not None and (
                known["auth_key_hash"] != fingerprint
            )
            if replaced:
                await conn.execute(
                    """INSERT INTO replaced_sessions (account_id, tenant_id, auth_key_hash,
                           session_ciphertext, session_wrapped_key, session_key_id)
                       SELECT id, tenant_id, auth_key_hash, session_ciphertext,
                              session_wrapped_key, session_key_id
                       FROM accounts WHERE id = $1""",
                    stored,
                )
            sealed = vault.seal(session, aad=stored.bytes)
            # A new session starts clean: no error or disabling of the old one. A flood
            # wait still running stays: Telegram keeps it for the user, not the session
            # (and the shared flood state goes on deferring the account's jobs). What the
            # user is called now, and the session's DC, replace what was kept before.
            after = await conn.fetchrow(
                """UPDATE accounts SET disabled_reason = NULL, invalid_since = NULL,
                       state = CASE WHEN flood_until > now() THEN 'flood_wait'
                                    ELSE 'active' END,
                       flood_until = CASE WHEN flood_until > now() THEN flood_until END,
                       last_error = NULL, session_ciphertext = $2, session_wrapped_key = $3,
                       session_key_id = $4, auth_key_hash = $5, phone = COALESCE($6, phone),
                       username = $7, first_name = $8, dc_id = COALESCE($9, dc_id),
                       updated_at = now()
                   WHERE id = $1
                   RETURNING state, flood_until""",
                stored,
                sealed.ciphertext,
                sealed.wrapped_key,
                sealed.key_id,
                fingerprint,
                me.get("phone"),
                me.get("username"),
                me.get("first_name"),
                me.get("dc_id"),
            )
            assert after is not None  # the row is locked above
            state = State(after["state"])
            if known["state"] != state.value:
                change = {"from": known["state"], "to": state.value}
                if after["flood_until"] is not None:
                    change["until"] = after["flood_until"].isoformat()
                await record_event(conn, stored, tenant, "state_change", change)
                log.info("account state changed", account_id=str(stored), **change)
        await record_event(conn, stored, tenant, "imported", {"tg_user_id": me["id"]})
    return Stored(stored, replaced, state)


async def touch(db: Pool, account_ids: list[uuid.UUID]) -> None:
    """Record that jobs used these accounts just now."""
    await db.execute(
        "UPDATE accounts SET last_used_at = now() WHERE id = ANY($1::uuid[])", account_ids
    )


async def disable(
    db: Pool, account: Account, reason: DisabledReason, *, code: str, method: str
) -> None:
    """A dead session: disable the account and write the alert-worthy error event."""
    await set_state(db, account, State.DISABLED, reason=reason, error=code)
    await record_event(
        db, account.id, account.tenant, "error", {"code": code, "method": method, "alert": True}
    )
