"""Logging in by phone and code (and 2FA password), and logging out."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from telethon import types
from telethon.sessions import StringSession
from telethon.tl.functions.users import GetUsersRequest

from services.sandbox.admin_client import SandboxAdmin
from services.sandbox.client import make_client, register_sandbox_key
from services.sandbox.server import Sandbox
from services.worker.telegram import accounts
from services.worker.telegram.accounts import auth_key_hash, insert_active
from services.worker.telegram.replaced import log_out_replaced
from services.worker.telegram.vault import Vault
from shared.errors import Deferral
from tests.helpers import auth, eventually, wait_for_status
from tests.telegram.conftest import (
    another_session,
    busy_account,
    close_runtime,
    import_account,
    insert_sealed,
    open_runtime,
    serving,
    signed_in,
    stored_session,
)
from tests.telegram.test_accounts_api import serves_then_logs_out
from tests.telegram.test_jobs import run

CODE = "22222"  # the sandbox's login code: the DC id five times


async def test_login_by_phone_and_code(api: httpx.AsyncClient, pg: asyncpg.Connection[Any]) -> None:
    started = await api.post("/v1/accounts", json={"phone": "+15550001111"}, headers=auth())
    assert started.status_code == 201, started.text
    step = started.json()
    assert (step["state"], step["next"]) == ("login_pending", "code")
    account_id = step["account_id"]
    wrong = await api.post(
        f"/v1/accounts/{account_id}/login/code", json={"code": "11111"}, headers=auth()
    )
    assert wrong.status_code == 400
    assert wrong.json()["error"]["code"] == "phone_code_invalid"
    done = await api.post(
        f"/v1/accounts/{account_id}/login/code", json={"code": CODE}, headers=auth()
    )
    assert done.status_code == 200, done.text
    assert done.json()["state"] == "active"
    row = await pg.fetchrow("SELECT * FROM accounts WHERE id = $1", uuid.UUID(account_id))
    assert row["login_attempts"] == 1
    assert row["tg_user_id"] == done.json()["tg_user_id"]
    me = await run(api, "telegram.get_me", account_id=account_id)
    assert me["result"]["id"] == done.json()["tg_user_id"]


async def test_logging_in_a_known_user_again_renews_that_account(
    api: httpx.AsyncClient, admin: SandboxAdmin, pg: asyncpg.Connection[Any]
) -> None:
    """One account per user: a second login hands its new session to the first account."""
    first, _ = await import_account(api, admin, phone="+15550002222")
    started = await api.post("/v1/accounts", json={"phone": "+15550002222"}, headers=auth())
    pending = started.json()["account_id"]
    done = await api.post(f"/v1/accounts/{pending}/login/code", json={"code": CODE}, headers=auth())
    assert done.status_code == 200, done.text
    assert done.json()["account_id"] == first["id"]
    assert done.json()["state"] == "active"
    assert await pg.fetchval("SELECT count(*) FROM accounts") == 1
    me = await run(api, "telegram.get_me", account_id=first["id"])
    assert me["status"] == "succeeded", me


async def test_a_login_replacing_a_connected_session_logs_the_old_key_out(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox, pg: asyncpg.Connection[Any]
) -> None:
    """The worker that has the account's old key connected drops that client and logs the
    key out (nobody else may connect it, and nobody would ever sign it out otherwise); its
    jobs go on with the new session, and deleting the account logs out the stored one."""
    first, created = await import_account(api, admin, phone="+15550002223")
    old = created["session_string"]
    held = await run(api, "telegram.get_me", account_id=first["id"])  # the old key connected
    assert held["status"] == "succeeded", held
    started = await api.post("/v1/accounts", json={"phone": "+15550002223"}, headers=auth())
    pending = started.json()["account_id"]
    done = await api.post(f"/v1/accounts/{pending}/login/code", json={"code": CODE}, headers=auth())
    assert done.json()["account_id"] == first["id"], done.text
    new = await stored_session(pg, first["id"])

    async def old_key_logged_out() -> bool:
        return not signed_in(sandbox, old)

    await eventually(old_key_logged_out)
    event = await eventually(
        lambda: pg.fetchrow(
            "SELECT details FROM account_events WHERE account_id = $1"
            " AND kind = 'session_replaced'",
            uuid.UUID(first["id"]),
        )
    )
    assert json.loads(event["details"]) == {"confirmed_by_telegram": True}
    assert await pg.fetchval("SELECT count(*) FROM replaced_sessions") == 0
    await serves_then_logs_out(api, admin, sandbox, first["id"], new)


async def test_logout_right_after_a_login_replaced_a_busy_session_logs_out_the_stored_one(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox, pg: asyncpg.Connection[Any]
) -> None:
    """A job still holds the client of the replaced key when the account is deleted: the
    logout waits for it and logs out the session tgflow stores, not the old one; the old
    key is logged out once the job lets go of it."""
    first, created = await import_account(api, admin, phone="+15550002224")
    old = created["session_string"]
    await admin.add_fault(created["user_id"], "delay", method="users.getUsers", seconds=3, times=1)
    busy = await api.post(
        "/v1/jobs",
        json={"type": "telegram.get_me", "params": {"account_id": first["id"]}},
        headers=auth(),
    )
    await wait_for_status(api, busy.json()["id"], {"running"}, timeout=10)
    started = await api.post("/v1/accounts", json={"phone": "+15550002224"}, headers=auth())
    pending = started.json()["account_id"]
    done = await api.post(f"/v1/accounts/{pending}/login/code", json={"code": CODE}, headers=auth())
    assert done.json()["account_id"] == first["id"], done.text
    new = await stored_session(pg, first["id"])
    out = await api.delete(f"/v1/accounts/{first['id']}", headers=auth())
    assert out.status_code == 200, out.text
    assert not signed_in(sandbox, new)

    async def old_key_logged_out() -> bool:
        return not signed_in(sandbox, old)

    await eventually(old_key_logged_out)
    job = await wait_for_status(api, busy.json()["id"], {"succeeded", "failed"}, timeout=15)
    assert job["status"] == "succeeded", job
    assert await admin.overlaps() == []


async def test_a_replaced_session_is_logged_out_while_its_account_stays_busy(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox, pg: asyncpg.Connection[Any]
) -> None:
    """Jobs keep the account's client in use without a pause: the client of the replaced
    key still goes (the jobs that come after the login get a client of the new session
    at once), and the old key is logged out while the jobs go on, all of them served."""
    first, created = await import_account(api, admin, phone="+15550002230")
    old = created["session_string"]
    async with busy_account(api, admin, first["id"], created["user_id"]):
        started = await api.post("/v1/accounts", json={"phone": "+15550002230"}, headers=auth())
        pending = started.json()["account_id"]
        done = await api.post(
            f"/v1/accounts/{pending}/login/code", json={"code": CODE}, headers=auth()
        )
        assert done.json()["account_id"] == first["id"], done.text
        new = await stored_session(pg, first["id"])

        async def old_key_logged_out() -> bool:
            return not signed_in(sandbox, old)

        await eventually(old_key_logged_out, timeout=10)
    assert signed_in(sandbox, new)
    assert await admin.overlaps() == []


async def test_a_logout_that_read_the_account_before_a_login_renewed_it_logs_out_both_keys(
    api: httpx.AsyncClient,
    admin: SandboxAdmin,
    sandbox: Sandbox,
    pg: asyncpg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The logout holds the account as read before a login stored a new session in it:
    the pool will not connect the old key, and the logout comes back for the stored one
    rather than erase a session that stays signed in at Telegram."""
    first, created = await import_account(api, admin, phone="+15550002228")
    read, go = asyncio.Event(), asyncio.Event()
    load = accounts.load

    async def paused_once(db: Any, account_id: uuid.UUID, tenant: str | None = None) -> Any:
        found = await load(db, account_id, tenant)
        if tenant is not None and str(account_id) == first["id"] and not read.is_set():
            read.set()  # the logout has the account (old session) in hand
            await go.wait()
        return found

    monkeypatch.setattr(accounts, "load", paused_once)
    deleting = asyncio.create_task(api.delete(f"/v1/accounts/{first['id']}", headers=auth()))
    await asyncio.wait_for(read.wait(), 10)
    started = await api.post("/v1/accounts", json={"phone": "+15550002228"}, headers=auth())
    pending = started.json()["account_id"]
    done = await api.post(f"/v1/accounts/{pending}/login/code", json={"code": CODE}, headers=auth())
    assert done.json()["account_id"] == first["id"], done.text
    new = await stored_session(pg, first["id"])
    go.set()
    out = await deleting
    assert out.status_code == 200, out.text
    assert out.json()["state"] == "disabled"
    row = await pg.fetchrow("SELECT * FROM accounts WHERE id = $1", uuid.UUID(first["id"]))
    assert (row["state"], row["session_ciphertext"]) == ("disabled", None)
    assert not signed_in(sandbox, new)

    async def no_key_signed_in() -> bool:  # the old one too, as a replaced session
        return sandbox.core.keys.for_user(created["user_id"]) == []

    await eventually(no_key_signed_in)
    assert await admin.overlaps() == []


async def test_a_replaced_session_under_a_vault_key_not_configured_here_is_kept(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox, pg: asyncpg.Connection[Any]
) -> None:
    """A worker without the vault key a replaced session is sealed under (mid-rotation,
    say) leaves it parked rather than discard it with its key still signed in; a worker
    that has the key logs it out."""
    first, created = await import_account(api, admin, phone="+15550002225")
    account_id = uuid.UUID(first["id"])
    old = await another_session(sandbox, created["phone"])
    other = Vault.parse(Vault.generate_entry("elsewhere"))
    parked = other.seal(old, aad=account_id.bytes)
    await pg.execute(
        """INSERT INTO replaced_sessions (account_id, tenant_id, auth_key_hash,
               session_ciphertext, session_wrapped_key, session_key_id)
           VALUES ($1, 'acme', $2, $3, $4, $5)""",
        account_id,
        auth_key_hash(old),
        parked.ciphertext,
        parked.wrapped_key,
        parked.key_id,
    )
    rt = await open_runtime(sandbox, "replaced-keyless")
    try:
        await log_out_replaced(rt, account_id)
        assert await pg.fetchval("SELECT count(*) FROM replaced_sessions") == 1
        assert signed_in(sandbox, old)
        rt.vault = other
        assert await log_out_replaced(rt, account_id) == 0
    finally:
        await close_runtime(rt)
    assert await pg.fetchval("SELECT count(*) FROM replaced_sessions") == 0
    assert not signed_in(sandbox, old)


async def test_a_job_that_read_the_account_before_its_session_was_replaced_uses_the_new_one(
    sandbox: Sandbox, admin: SandboxAdmin, pg: asyncpg.Connection[Any]
) -> None:
    """A job holding the account as read just before a login replaced its session does
    not connect the old key (being logged out, or logged out already): it is deferred and
    runs with the new session, and the account is not disabled by the old key's death."""
    created = await admin.create_account(phone="+15550002226")
    old = created["session_string"]
    rt = await open_runtime(sandbox, "stale-read")
    try:
        await pg.execute("INSERT INTO tenants (id, name) VALUES ('acme', 'acme')")
        account_id = uuid.uuid4()
        sealed = rt.vault.seal(old, aad=account_id.bytes)
        await insert_sealed(pg, account_id, created["user_id"], sealed)
        await pg.execute(
            "UPDATE accounts SET auth_key_hash = $2 WHERE id = $1", account_id, auth_key_hash(old)
        )
        read, go = asyncio.Event(), asyncio.Event()
        load_usable = rt.load_usable

        async def after_the_read(tenant: str, account: uuid.UUID) -> Any:
            loaded = await load_usable(tenant, account)
            read.set()  # the job has the account (old session) in hand
            await go.wait()
            return loaded

        rt.load_usable = after_the_read  # type: ignore[method-assign]

        async def get_me() -> Any:
            async with rt.session("acme", account_id) as tg:
                request = GetUsersRequest([types.InputUserSelf()])
                return await tg.call("users.getUsers", lambda: tg.client(request))

        job = asyncio.create_task(get_me())
        await read.wait()
        new = await another_session(sandbox, created["phone"])
        me = {"id": created["user_id"], "phone": created["phone"], "dc_id": 2}
        stored = await insert_active(rt.db, vault=rt.vault, tenant="acme", session=new, me=me)
        assert stored.replaced
        assert await log_out_replaced(rt, account_id) == 0
        assert not signed_in(sandbox, old)
        go.set()
        with pytest.raises(Deferral) as deferred:
            await job
        assert deferred.value.code == "session_replaced"
        rt.load_usable = load_usable  # type: ignore[method-assign]
        users = await get_me()
        assert users[0].id == created["user_id"]
    finally:
        await close_runtime(rt)
    row = await pg.fetchrow("SELECT state FROM accounts WHERE id = $1", account_id)
    assert row["state"] == "active"
    assert signed_in(sandbox, new)
    assert await admin.overlaps() == []


async def test_two_logins_of_one_user_finishing_together_end_in_one_account(
    api: httpx.AsyncClient, sandbox: Sandbox, pg: asyncpg.Connection[Any]
) -> None:
    """The login that loses the race to store the user merges into the winner's account,
    as a later login would: both answer 200 with that account, no half-made row is left,
    and the session it replaces is logged out rather than left signed in."""
    for n in range(4):  # the two steps interleave differently from run to run
        phone = f"+155500066{n:02d}"
        pending = [
            (await api.post("/v1/accounts", json={"phone": phone}, headers=auth())).json()[
                "account_id"
            ]
            for _ in range(2)
        ]
        answers = await asyncio.gather(
            *(
                api.post(f"/v1/accounts/{a}/login/code", json={"code": CODE}, headers=auth())
                for a in pending
            )
        )
        assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
        account_id = answers[0].json()["account_id"]
        assert answers[1].json()["account_id"] == account_id
        rows = await pg.fetch("SELECT id, state FROM accounts WHERE phone = $1", phone)
        assert [(str(r["id"]), r["state"]) for r in rows] == [(account_id, "active")]
        me = await run(api, "telegram.get_me", account_id=account_id)
        assert me["status"] == "succeeded", me

    async def all_replaced_logged_out() -> bool:
        return await pg.fetchval("SELECT count(*) FROM replaced_sessions") == 0

    await eventually(all_replaced_logged_out)
    # One key signed in per user: the one stored.
    for row in await pg.fetch("SELECT id, tg_user_id FROM accounts"):
        key = StringSession(await stored_session(pg, str(row["id"]))).auth_key
        assert key is not None
        assert [k.key_id for k in sandbox.core.keys.for_user(row["tg_user_id"])] == [key.key_id]


async def test_login_with_two_factor_password(
    api: httpx.AsyncClient, admin: SandboxAdmin, pg: asyncpg.Connection[Any]
) -> None:
    await admin.create_account(phone="+15550002222", password="open sesame", authorized=False)
    account_id = (
        await api.post("/v1/accounts", json={"phone": "+15550002222"}, headers=auth())
    ).json()["account_id"]

    async def slow_user() -> None:  # the last step was long ago...
        await pg.execute(
            "UPDATE accounts SET updated_at = now() - interval '50 minutes' WHERE id = $1",
            uuid.UUID(account_id),
        )

    async def step_recorded() -> bool:  # ...and this step counts from now (see pruning)
        return bool(
            await pg.fetchval(
                "SELECT updated_at > now() - interval '1 minute' FROM accounts WHERE id = $1",
                uuid.UUID(account_id),
            )
        )

    early = await api.post(  # before the code step asked for it
        f"/v1/accounts/{account_id}/login/password", json={"password": "x"}, headers=auth()
    )
    assert (early.status_code, early.json()["error"]["code"]) == (409, "password_not_expected")
    await slow_user()
    step = await api.post(
        f"/v1/accounts/{account_id}/login/code", json={"code": CODE}, headers=auth()
    )
    assert step.json()["next"] == "password"
    assert await step_recorded()
    await slow_user()
    wrong = await api.post(
        f"/v1/accounts/{account_id}/login/password", json={"password": "guess"}, headers=auth()
    )
    assert wrong.status_code == 400
    assert wrong.json()["error"]["code"] == "password_invalid"
    assert await step_recorded()
    right = await api.post(
        f"/v1/accounts/{account_id}/login/password",
        json={"password": "open sesame"},
        headers=auth(),
    )
    assert right.status_code == 200, right.text
    assert right.json()["state"] == "active"
    jobs = (await api.get("/v1/jobs?limit=200", headers=auth())).text
    assert "open sesame" not in jobs  # the password travelled by reference only


async def test_a_login_is_cancelled_after_too_many_wrong_codes(
    api: httpx.AsyncClient, sandbox: Sandbox, pg: asyncpg.Connection[Any]
) -> None:
    """Five wrong codes (TGFLOW_TELEGRAM_LOGIN_MAX_ATTEMPTS) and the login is over: the
    code is withdrawn at Telegram, the half-made session erased, the right code no longer
    works, and further tries do not keep the login from expiring."""
    started = await api.post("/v1/accounts", json={"phone": "+15550007777"}, headers=auth())
    account_id = started.json()["account_id"]
    url = f"/v1/accounts/{account_id}/login/code"
    for _ in range(4):
        wrong = await api.post(url, json={"code": "11111"}, headers=auth())
        assert wrong.json()["error"]["code"] == "phone_code_invalid", wrong.text
    last = await api.post(url, json={"code": "11111"}, headers=auth())
    assert last.status_code == 409, last.text
    assert last.json()["error"]["code"] == "login_attempts_exceeded"
    assert "start a new one" in last.json()["error"]["message"]
    row = await pg.fetchrow("SELECT * FROM accounts WHERE id = $1", uuid.UUID(account_id))
    assert (row["login_attempts"], row["session_ciphertext"]) == (5, None)
    assert all(not key.codes for key in sandbox.core.keys.for_user(None))
    right = await api.post(url, json={"code": CODE}, headers=auth())
    assert right.status_code == 409, right.text
    assert right.json()["error"]["code"] == "login_attempts_exceeded"
    after = await pg.fetchrow("SELECT * FROM accounts WHERE id = $1", uuid.UUID(account_id))
    assert (after["state"], after["updated_at"]) == ("login_pending", row["updated_at"])
    again = await api.post("/v1/accounts", json={"phone": "+15550007777"}, headers=auth())
    done = await api.post(
        f"/v1/accounts/{again.json()['account_id']}/login/code", json={"code": CODE}, headers=auth()
    )
    assert done.status_code == 200, done.text


async def test_wrong_codes_sent_at_once_are_limited_and_share_one_connection(
    api: httpx.AsyncClient, admin: SandboxAdmin, pg: asyncpg.Connection[Any]
) -> None:
    """Steps of one login run one at a time: ten wrong codes sent together reach Telegram
    five times (the limit), the rest answer 409, and the half-made session is never
    connected twice at once."""
    started = await api.post("/v1/accounts", json={"phone": "+15550007779"}, headers=auth())
    account_id = started.json()["account_id"]
    url = f"/v1/accounts/{account_id}/login/code"
    answers = await asyncio.gather(
        *(api.post(url, json={"code": "11111"}, headers=auth()) for _ in range(10))
    )
    codes = sorted(a.json()["error"]["code"] for a in answers)
    assert codes == ["login_attempts_exceeded"] * 6 + ["phone_code_invalid"] * 4, codes
    row = await pg.fetchrow("SELECT * FROM accounts WHERE id = $1", uuid.UUID(account_id))
    assert row["login_attempts"] == 5
    assert await admin.overlaps() == []


async def test_a_login_is_cancelled_after_too_many_wrong_passwords(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    await admin.create_account(phone="+15550007778", password="pw", authorized=False)
    started = await api.post("/v1/accounts", json={"phone": "+15550007778"}, headers=auth())
    account_id = started.json()["account_id"]
    code_url = f"/v1/accounts/{account_id}/login/code"
    wrong = await api.post(code_url, json={"code": "11111"}, headers=auth())
    assert wrong.json()["error"]["code"] == "phone_code_invalid"  # codes and passwords add up
    asked = await api.post(code_url, json={"code": CODE}, headers=auth())
    assert asked.json()["next"] == "password", asked.text
    url = f"/v1/accounts/{account_id}/login/password"
    codes = []
    for _ in range(4):
        bad = await api.post(url, json={"password": "bad"}, headers=auth())
        codes.append(bad.json()["error"]["code"])
    assert codes == ["password_invalid"] * 3 + ["login_attempts_exceeded"]
    right = await api.post(url, json={"password": "pw"}, headers=auth())
    assert right.status_code == 409, right.text
    assert right.json()["error"]["code"] == "login_attempts_exceeded"


async def test_logout_erases_the_session(
    api: httpx.AsyncClient, admin: SandboxAdmin, pg: asyncpg.Connection[Any]
) -> None:
    started = await api.post("/v1/accounts", json={"phone": "+15550003333"}, headers=auth())
    account_id = started.json()["account_id"]
    await api.post(f"/v1/accounts/{account_id}/login/code", json={"code": CODE}, headers=auth())
    out = await api.delete(f"/v1/accounts/{account_id}", headers=auth())
    assert out.status_code == 200, out.text
    row = await pg.fetchrow("SELECT * FROM accounts WHERE id = $1", uuid.UUID(account_id))
    assert (row["state"], row["disabled_reason"]) == ("disabled", "logged_out")
    assert row["session_ciphertext"] is None
    health = (await api.get("/v1/telegram/health", headers=auth())).json()
    assert (health["status"], health["accounts"]["total"]) == ("ok", 0)
    again = await api.post(
        "/v1/jobs",
        json={"type": "telegram.get_me", "params": {"account_id": account_id}},
        headers=auth(),
    )
    assert again.status_code == 409
    missing = await api.delete(f"/v1/accounts/{uuid.uuid4()}", headers=auth())
    assert missing.status_code == 404


async def code_step_held(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox, phone: str, seconds: int = 2
) -> tuple[str, int, asyncio.Task[httpx.Response]]:
    """A login of ``phone`` whose code step is running, its ``auth.signIn`` held by the
    sandbox for ``seconds``: (account id, user id, the step's request)."""
    created = await admin.create_account(phone=phone, authorized=False)
    started = await api.post("/v1/accounts", json={"phone": phone}, headers=auth())
    account_id = started.json()["account_id"]
    await admin.add_fault(
        created["user_id"], "delay", method="auth.signIn", seconds=seconds, times=1
    )
    step = asyncio.create_task(
        api.post(f"/v1/accounts/{account_id}/login/code", json={"code": CODE}, headers=auth())
    )

    async def held() -> bool:
        return any(f.method == "auth.signIn" and f.fired for f in sandbox.core.faults.all())

    await eventually(held)
    return account_id, created["user_id"], step


async def test_deleting_a_login_while_its_code_step_runs_logs_out_what_the_step_stored(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox, pg: asyncpg.Connection[Any]
) -> None:
    """The DELETE waits for the step (one step of a login at a time, a logout included):
    it never connects the half-made session beside the step, and the step never stores
    its session back into the account the DELETE answered as disabled."""
    account_id, user_id, step = await code_step_held(api, admin, sandbox, "+15550007781")
    out = await api.delete(f"/v1/accounts/{account_id}", headers=auth())
    assert out.status_code == 200, out.text
    assert out.json()["state"] == "disabled"
    assert (await step).json()["state"] == "active"  # the step ended first
    row = await pg.fetchrow("SELECT * FROM accounts WHERE id = $1", uuid.UUID(account_id))
    assert (row["state"], row["disabled_reason"]) == ("disabled", "logged_out")
    assert row["session_ciphertext"] is None
    event = await pg.fetchrow(
        "SELECT details FROM account_events WHERE account_id = $1 AND kind = 'logout'",
        uuid.UUID(account_id),
    )
    assert json.loads(event["details"]) == {"confirmed_by_telegram": True}
    assert sandbox.core.keys.for_user(user_id) == []  # nothing left signed in
    assert await admin.overlaps() == []


async def test_a_code_step_telegram_does_not_answer_gives_up_in_time_and_frees_the_login(
    sandbox: Sandbox, admin: SandboxAdmin, pg: asyncpg.Connection[Any]
) -> None:
    """An auth.signIn with no answer is given up after TGFLOW_TELEGRAM_REQUEST_TIMEOUT:
    the step answers 504 timeout (the same code may be sent again) instead of holding the
    login's steps until its job times out, and a DELETE waiting behind it goes ahead."""
    async with serving(sandbox, telegram_request_timeout=1.0) as api:
        account_id, _, step = await code_step_held(api, admin, sandbox, "+15550007785", 8)
        began = time.monotonic()
        out = await api.delete(f"/v1/accounts/{account_id}", headers=auth())
        answer = await step
        assert time.monotonic() - began < 5
    assert answer.status_code == 504, answer.text
    error = answer.json()["error"]
    assert error["code"] == "timeout"
    assert "send the same request again" in error["message"]
    assert out.status_code == 200, out.text
    row = await pg.fetchrow("SELECT * FROM accounts WHERE id = $1", uuid.UUID(account_id))
    assert (row["state"], row["session_ciphertext"]) == ("disabled", None)


async def test_a_code_step_of_a_login_deleted_meanwhile_stores_nothing_and_logs_out(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox, pg: asyncpg.Connection[Any]
) -> None:
    """A login deleted while its code step signs in (as a worker that had not seen the
    step would: its row disabled under the step) is not brought back: the step answers
    409 login_not_pending and logs out the session it made, which nobody stores."""
    account_id, user_id, step = await code_step_held(api, admin, sandbox, "+15550007782")
    await pg.execute(
        """UPDATE accounts SET state = 'disabled', disabled_reason = 'logged_out',
               session_ciphertext = NULL, session_wrapped_key = NULL, session_key_id = NULL
           WHERE id = $1""",
        uuid.UUID(account_id),
    )
    answer = await step
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"]["code"] == "login_not_pending"
    row = await pg.fetchrow("SELECT * FROM accounts WHERE id = $1", uuid.UUID(account_id))
    assert (row["state"], row["session_ciphertext"], row["tg_user_id"]) == ("disabled", None, None)
    assert sandbox.core.keys.for_user(user_id) == []


async def test_deleting_a_pending_login_withdraws_its_code(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox, pg: asyncpg.Connection[Any]
) -> None:
    """A login not finished has no signed-in session to log out: its code is withdrawn
    (auth.cancelCode) over a connection of its own, and the half-made session erased."""
    started = await api.post("/v1/accounts", json={"phone": "+15550007783"}, headers=auth())
    account_id = started.json()["account_id"]
    assert any(key.codes for key in sandbox.core.keys.for_user(None))
    out = await api.delete(f"/v1/accounts/{account_id}", headers=auth())
    assert out.status_code == 200, out.text
    assert all(not key.codes for key in sandbox.core.keys.for_user(None))
    row = await pg.fetchrow("SELECT * FROM accounts WHERE id = $1", uuid.UUID(account_id))
    assert (row["state"], row["disabled_reason"]) == ("disabled", "logged_out")
    assert (row["session_ciphertext"], row["login_code_hash"]) == (None, None)
    event = await pg.fetchrow(
        "SELECT details FROM account_events WHERE account_id = $1 AND kind = 'logout'",
        uuid.UUID(account_id),
    )
    assert json.loads(event["details"]) == {"confirmed_by_telegram": True}
    late = await api.post(
        f"/v1/accounts/{account_id}/login/code", json={"code": CODE}, headers=auth()
    )
    assert (late.status_code, late.json()["error"]["code"]) == (409, "login_not_pending")
    assert await admin.overlaps() == []


async def test_logout_while_a_job_uses_the_client_opens_no_second_connection(
    api: httpx.AsyncClient, admin: SandboxAdmin, pg: asyncpg.Connection[Any]
) -> None:
    """One connection per key: the logout goes over the client the running job holds."""
    account, created = await import_account(api, admin)
    await admin.add_fault(created["user_id"], "delay", method="users.getUsers", seconds=2, times=1)
    submitted = await api.post(
        "/v1/jobs",
        json={"type": "telegram.get_me", "params": {"account_id": account["id"]}},
        headers=auth(),
    )
    job_id = submitted.json()["id"]
    await wait_for_status(api, job_id, {"running"}, timeout=10)
    out = await api.delete(f"/v1/accounts/{account['id']}", headers=auth())
    assert out.status_code == 200, out.text
    assert await admin.overlaps() == []
    event = await pg.fetchrow(
        "SELECT details FROM account_events WHERE account_id = $1 AND kind = 'logout'",
        uuid.UUID(account["id"]),
    )
    assert json.loads(event["details"]) == {"confirmed_by_telegram": True}
    # Telegram forgot the key: the session string no longer opens the account.
    register_sandbox_key()
    client = make_client(created["session_string"])
    await client.connect()
    try:
        assert not await client.is_user_authorized()
    finally:
        await client.disconnect()
    await wait_for_status(api, job_id, {"succeeded", "failed"}, timeout=15)


async def test_bad_login_input(api: httpx.AsyncClient) -> None:
    phone = await api.post("/v1/accounts", json={"phone": "12345"}, headers=auth())
    assert phone.status_code == 422
    code = await api.post(
        f"/v1/accounts/{uuid.uuid4()}/login/code", json={"code": "22222"}, headers=auth()
    )
    assert code.status_code == 404
    assert code.json()["error"]["code"] == "account_not_found"


@pytest.mark.parametrize(
    ("kind", "code"), [("flood_wait", "flood_wait"), ("slowmode_wait", "slow_mode_wait")]
)
async def test_a_flood_wait_on_a_login_step_answers_429_with_retry_after(
    api: httpx.AsyncClient, admin: SandboxAdmin, kind: str, code: str
) -> None:
    """Telegram floods auth.sendCode and auth.signIn readily; whoever is logging in is
    told at once when to try again, not answered 502, whichever wait Telegram named."""
    created = await admin.create_account(phone="+15550004444", authorized=False)
    await admin.add_fault(created["user_id"], kind, method="auth.sendCode", seconds=120, times=1)
    flooded = await api.post("/v1/accounts", json={"phone": "+15550004444"}, headers=auth())
    assert flooded.status_code == 429, flooded.text
    error = flooded.json()["error"]
    assert error["code"] == code
    assert error["details"]["retry_after"] == 120
    assert flooded.headers["Retry-After"] == "120"
    # After the wait (one flood here), the login goes ahead.
    started = await api.post("/v1/accounts", json={"phone": "+15550004444"}, headers=auth())
    assert started.status_code in (200, 201), started.text
    assert started.json()["next"] == "code"


async def test_a_login_of_a_number_with_no_telegram_account_is_422(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    """Telegram answers auth.signIn of a number nobody signed up with signUpRequired
    (Telethon: PhoneNumberUnoccupiedError): the caller's number, so a 4xx in words."""
    await admin.set_sign_up_unknown(False)
    started = await api.post("/v1/accounts", json={"phone": "+15550004446"}, headers=auth())
    assert started.status_code == 201, started.text
    answer = await api.post(
        f"/v1/accounts/{started.json()['account_id']}/login/code",
        json={"code": CODE},
        headers=auth(),
    )
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "phone_number_unoccupied"
    assert error["message"].startswith("No Telegram account uses this phone number")


_BANNED = "Telegram has banned the Telegram account of this number"
_DELETED = "The Telegram account of this number is deleted"
_GONE = "start a new login with POST /v1/accounts"


@pytest.mark.parametrize(
    ("method", "refusal", "status", "code", "message"),
    [
        ("auth.sendCode", "PHONE_NUMBER_FLOOD", 429, None, "asked for this number's login code"),
        ("auth.signIn", "PHONE_NUMBER_FLOOD", 429, None, "asked for this number's login code"),
        ("auth.checkPassword", "PHONE_PASSWORD_FLOOD", 429, None, "Too many wrong 2FA passwords"),
        ("auth.signIn", "PHONE_NUMBER_APP_SIGNUP_FORBIDDEN", 422, None, "You can't sign up using"),
        (
            "auth.signIn",
            "SOMETHING_NEW",
            422,
            None,
            "Telegram refused the request (SOMETHING_NEW).",
        ),
        # Telegram's 401s, which disable a signed-in account, in a login step:
        ("auth.signIn", "USER_DEACTIVATED_BAN", 403, None, _BANNED),
        ("auth.checkPassword", "USER_DEACTIVATED", 403, None, _DELETED),
        ("auth.signIn", "AUTH_KEY_UNREGISTERED", 409, "login_expired", _GONE),
        ("auth.signIn", "SESSION_REVOKED", 409, "login_expired", _GONE),
        ("auth.checkPassword", "SESSION_EXPIRED", 409, "login_expired", _GONE),
    ],
)
async def test_telegram_refusing_a_login_step_is_a_4xx_in_words(
    api: httpx.AsyncClient,
    admin: SandboxAdmin,
    pg: asyncpg.Connection[Any],
    method: str,
    refusal: str,
    status: int,
    code: str | None,
    message: str,
) -> None:
    """What Telegram refuses in a login step (a 400 or 406 of its own) is the caller's to
    change: a 4xx under the error's snake_case name, with a sentence, never Telethon's
    account of the request it sent. A banned or deleted user is a 403, a half-made
    session Telegram no longer knows a 409; either ends the login, its session erased."""
    created = await admin.create_account(phone="+15550004447", password="pw", authorized=False)
    await admin.add_fault(created["user_id"], "error", method=method, error=refusal, times=1)
    started = await api.post("/v1/accounts", json={"phone": "+15550004447"}, headers=auth())
    answer = started
    url = f"/v1/accounts/{started.json().get('account_id')}/login"
    if method != "auth.sendCode":
        answer = await api.post(f"{url}/code", json={"code": CODE}, headers=auth())
        if method == "auth.checkPassword":
            assert answer.json()["next"] == "password", answer.text
            answer = await api.post(f"{url}/password", json={"password": "pw"}, headers=auth())
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == (code or refusal.lower())
    assert message in error["message"]
    assert "caused by" not in error["message"]
    assert "Request" not in error["message"]
    if status in (403, 409):  # the 401s above end the login: session gone, steps refused
        row = await pg.fetchrow(
            "SELECT * FROM accounts WHERE id = $1", uuid.UUID(started.json()["account_id"])
        )
        assert (row["state"], row["session_ciphertext"]) == ("login_pending", None)
        again = await api.post(f"{url}/code", json={"code": CODE}, headers=auth())
        assert (again.status_code, again.json()["error"]["code"]) == (409, "login_not_pending")
        assert "start a new one" in again.json()["error"]["message"]


async def test_deleting_an_account_disabled_already_records_it_logged_out(
    api: httpx.AsyncClient, admin: SandboxAdmin, pg: asyncpg.Connection[Any]
) -> None:
    account, created = await import_account(api, admin)
    await admin.add_fault(created["user_id"], "revoke")
    failed = await run(api, "telegram.get_me", account_id=account["id"])
    assert failed["error"]["code"] == "auth_key_unregistered"
    health = (await api.get("/v1/telegram/health", headers=auth())).json()
    assert health["status"] == "degraded"  # a revoked session is a problem...
    out = await api.delete(f"/v1/accounts/{account['id']}", headers=auth())
    assert out.status_code == 200, out.text
    row = await pg.fetchrow("SELECT * FROM accounts WHERE id = $1", uuid.UUID(account["id"]))
    assert (row["state"], row["disabled_reason"]) == ("disabled", "logged_out")
    assert row["session_ciphertext"] is None
    health = (await api.get("/v1/telegram/health", headers=auth())).json()
    assert health["status"] == "ok"  # ...until its owner deletes it


async def _at_password_step(api: httpx.AsyncClient, account_id: str) -> None:
    asked = await api.post(
        f"/v1/accounts/{account_id}/login/code", json={"code": CODE}, headers=auth()
    )
    assert asked.json()["next"] == "password", asked.text


@pytest.mark.parametrize(
    ("method", "kind"),
    [
        ("auth.signIn", "delay_after"),
        ("auth.signIn", "drop_after"),
        ("auth.checkPassword", "delay_after"),
        ("auth.checkPassword", "drop_after"),
    ],
)
async def test_a_login_step_whose_answer_is_lost_finishes_the_sign_in_it_made(
    sandbox: Sandbox, admin: SandboxAdmin, pg: asyncpg.Connection[Any], method: str, kind: str
) -> None:
    """Telegram signed the login's key in but its answer never came back: held past
    TGFLOW_TELEGRAM_REQUEST_TIMEOUT, or the connection dropped and Telethon's resend
    found the code (or the password's challenge) used up. The step asks the key and
    finishes the login as the answer would have, rather than 504 or a wrong code."""
    phone = "+15550008801"
    password = "pw" if method == "auth.checkPassword" else None
    created = await admin.create_account(phone=phone, password=password, authorized=False)
    async with serving(sandbox, telegram_request_timeout=1.0) as api:
        started = await api.post("/v1/accounts", json={"phone": phone}, headers=auth())
        account_id = started.json()["account_id"]
        url = f"/v1/accounts/{account_id}/login"
        if password:
            await _at_password_step(api, account_id)
        await admin.add_fault(created["user_id"], kind, method=method, seconds=5, times=1)
        if password:
            answer = await api.post(f"{url}/password", json={"password": "pw"}, headers=auth())
        else:
            answer = await api.post(f"{url}/code", json={"code": CODE}, headers=auth())
        assert answer.status_code == 200, answer.text
        assert answer.json()["state"] == "active"
        assert answer.json()["tg_user_id"] == created["user_id"]
        me = await run(api, "telegram.get_me", account_id=account_id)
        assert me["result"]["id"] == created["user_id"], me
    row = await pg.fetchrow("SELECT * FROM accounts WHERE id = $1", uuid.UUID(account_id))
    assert (row["state"], row["tg_user_id"], row["login_attempts"]) == (
        "active",
        created["user_id"],
        0,
    )
    key = StringSession(await stored_session(pg, account_id)).auth_key
    assert key is not None
    assert [k.key_id for k in sandbox.core.keys.for_user(created["user_id"])] == [key.key_id]


async def lost_sign_in(
    api: httpx.AsyncClient, admin: SandboxAdmin, created: dict[str, Any], kind: str = "delay_after"
) -> str:
    """A login of the sandbox account ``created`` whose code step answered 504 although
    Telegram signed its key in: the answer to auth.signIn is held (or its connection
    dropped, ``kind`` drop_after), and so is the one call that could have told (the
    step's users.getUsers on the key once signed in). Its id."""
    phone = f"+{created['phone'].lstrip('+')}"
    started = await api.post("/v1/accounts", json={"phone": phone}, headers=auth())
    account_id: str = started.json()["account_id"]
    user_id = created["user_id"]
    await admin.add_fault(user_id, kind, method="auth.signIn", seconds=5, times=1)
    probe = await admin.add_fault(user_id, "delay", method="users.getUsers", seconds=5)
    lost = await api.post(
        f"/v1/accounts/{account_id}/login/code", json={"code": CODE}, headers=auth()
    )
    assert lost.status_code == 504, lost.text
    await admin.delete_fault(probe)  # Telegram answers again
    return account_id


async def test_deleting_a_login_whose_lost_step_signed_in_logs_the_key_out(
    sandbox: Sandbox, admin: SandboxAdmin, pg: asyncpg.Connection[Any]
) -> None:
    """A DELETE of a login whose key a lost step signed in logs that key out: nothing
    stores the key once the DELETE has erased it, and it would stay a live authorization
    of the user that nobody sees (its code, used up, can no longer be withdrawn)."""
    async with serving(sandbox, telegram_request_timeout=1.0) as api:
        created = await admin.create_account(phone="+15550008802", authorized=False)
        user_id = created["user_id"]
        account_id = await lost_sign_in(api, admin, created)
        assert sandbox.core.keys.for_user(user_id) != []  # signed in at Telegram
        out = await api.delete(f"/v1/accounts/{account_id}", headers=auth())
    assert out.status_code == 200, out.text
    assert sandbox.core.keys.for_user(user_id) == []
    row = await pg.fetchrow("SELECT * FROM accounts WHERE id = $1", uuid.UUID(account_id))
    assert (row["state"], row["session_ciphertext"]) == ("disabled", None)
    event = await pg.fetchrow(
        "SELECT details FROM account_events WHERE account_id = $1 AND kind = 'logout'",
        uuid.UUID(account_id),
    )
    assert json.loads(event["details"]) == {"confirmed_by_telegram": True}


async def test_the_step_after_a_lost_one_finishes_the_login_it_signed_in(
    sandbox: Sandbox, admin: SandboxAdmin, pg: asyncpg.Connection[Any]
) -> None:
    """The code sent again after a 504 whose sign-in went through finishes the login
    (Telegram would refuse the used code): Telethon's sign_in asks the key for its user
    before it signs in. A user the tenant has an account for is merged into it, as a
    login that was answered would be."""
    async with serving(sandbox, telegram_request_timeout=1.0) as api:
        known, created = await import_account(api, admin, phone="+15550008803")
        user_id = created["user_id"]
        account_id = await lost_sign_in(api, admin, created)
        again = await api.post(
            f"/v1/accounts/{account_id}/login/code", json={"code": CODE}, headers=auth()
        )
        assert again.status_code == 200, again.text
        assert again.json()["account_id"] == known["id"]
        assert again.json()["state"] == "active"
        me = await run(api, "telegram.get_me", account_id=known["id"])
        assert me["result"]["id"] == user_id, me
    assert await pg.fetchval("SELECT count(*) FROM accounts") == 1
