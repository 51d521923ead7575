"""Abandoned logins are dropped, and a key a lost sign-in may have signed in is logged
out first: never left signed in at Telegram with nobody storing it."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY
from telethon.sessions import StringSession

from services.sandbox.admin_client import SandboxAdmin
from services.sandbox.keys import format_key_id
from services.sandbox.server import Sandbox
from services.worker.tasks import login
from services.worker.telegram import abandoned
from services.worker.telegram.runtime import TelegramRuntime
from services.worker.telegram.upkeep import prune_once
from tests.helpers import auth
from tests.proxy import DcProxy
from tests.telegram.conftest import close_runtime, open_runtime, serving, stored_session
from tests.telegram.test_login import CODE, lost_sign_in


@pytest.fixture
async def pruner(sandbox: Sandbox, proxy: DcProxy) -> AsyncIterator[TelegramRuntime]:
    """A worker's runtime reaching the sandbox DC through ``proxy``."""
    rt = await open_runtime(sandbox, "pruner", dc=proxy.address, telegram_request_timeout=2.0)
    yield rt
    await close_runtime(rt)


async def _expire(pg: asyncpg.Connection[Any], *account_ids: str) -> None:
    await pg.execute(
        "UPDATE accounts SET updated_at = now() - interval '61 minutes' WHERE id = ANY($1)",
        [uuid.UUID(a) for a in account_ids],
    )


async def _key(pg: asyncpg.Connection[Any], account_id: str) -> str:
    key = StringSession(await stored_session(pg, account_id)).auth_key
    assert key is not None
    return format_key_id(key.key_id)


def _counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _lost(sandbox: Sandbox, admin: SandboxAdmin, phone: str, kind: str) -> tuple[str, int]:
    """An expired login whose code step's answer was lost with its key signed in."""
    created = await admin.create_account(phone=phone, authorized=False)
    async with serving(sandbox, telegram_request_timeout=1.0) as api:
        account_id = await lost_sign_in(api, admin, created, kind)
    assert sandbox.core.keys.for_user(created["user_id"]) != []  # signed in at Telegram
    return account_id, created["user_id"]


async def _kept(
    sandbox: Sandbox,
    admin: SandboxAdmin,
    pg: asyncpg.Connection[Any],
    pruner: TelegramRuntime,
    proxy: DcProxy,
    phone: str,
    passes: int,
) -> tuple[str, int]:
    """An expired lost login (``_lost``) that ``passes`` prune passes kept, Telegram
    unreachable (``proxy`` cut, and left so)."""
    account_id, user_id = await _lost(sandbox, admin, phone, "delay_after")
    await _expire(pg, account_id)
    await proxy.cut()
    for _ in range(passes):
        assert await prune_once(pruner) == (0, 0)
    return account_id, user_id


@pytest.mark.parametrize("kind", ["delay_after", "drop_after"])
async def test_an_abandoned_login_whose_lost_step_signed_in_its_key_is_logged_out(
    sandbox: Sandbox,
    admin: SandboxAdmin,
    pg: asyncpg.Connection[Any],
    pruner: TelegramRuntime,
    kind: str,
) -> None:
    """Nobody came back to the login after a step whose sign-in went through unheard (its
    auth.signIn's answer held or its connection dropped, and the key's user not found
    out either): its expiry checks the key and logs it out before the session goes."""
    account_id, user_id = await _lost(sandbox, admin, "+15550008811", kind)
    await _expire(pg, account_id)
    found = _counted("tgflow_telegram_login_lost_sign_ins_total", step="prune")
    assert await prune_once(pruner) == (1, 0)
    assert sandbox.core.keys.for_user(user_id) == []
    assert await pg.fetchval("SELECT count(*) FROM accounts") == 0
    assert _counted("tgflow_telegram_login_lost_sign_ins_total", step="prune") == found + 1


async def test_ordinary_abandoned_logins_go_without_a_connection(
    sandbox: Sandbox,
    admin: SandboxAdmin,
    pg: asyncpg.Connection[Any],
    pruner: TelegramRuntime,
) -> None:
    """Logins whose key no sign-in can have signed in (a code never entered, a wrong one,
    one waiting for its password) are dropped without a word to Telegram; only the key
    of a lost sign-in beside them is connected, once."""
    lost, _ = await _lost(sandbox, admin, "+15550008821", "delay_after")
    phones = ["+15550008822", "+15550008823", "+15550008824"]
    await admin.create_account(phone=phones[0], authorized=False)
    await admin.create_account(phone=phones[1], authorized=False)
    await admin.create_account(phone=phones[2], password="pw", authorized=False)
    async with serving(sandbox) as api:
        ids = []
        for phone in phones:
            started = await api.post("/v1/accounts", json={"phone": phone}, headers=auth())
            ids.append(started.json()["account_id"])
        url = f"/v1/accounts/{ids[1]}/login/code"
        wrong = await api.post(url, json={"code": "00000"}, headers=auth())
        assert wrong.json()["error"]["code"] == "phone_code_invalid", wrong.text
        url = f"/v1/accounts/{ids[2]}/login/code"
        asked = await api.post(url, json={"code": CODE}, headers=auth())
        assert asked.json()["next"] == "password", asked.text
    await _expire(pg, lost, *ids)
    key = await _key(pg, lost)
    before = len(await admin.ledger())
    assert await prune_once(pruner) == (4, 0)
    assert await pg.fetchval("SELECT count(*) FROM accounts") == 0
    opened = (await admin.ledger())[before:]
    assert [r["auth_key_id"] for r in opened] == [key]


async def test_a_login_another_worker_owns_or_a_step_holds_is_left_alone(
    sandbox: Sandbox,
    admin: SandboxAdmin,
    pg: asyncpg.Connection[Any],
    pruner: TelegramRuntime,
) -> None:
    """One key, one connection: the check is the login's shard owner's, and waits for a
    step of the login running there (held like one of its steps)."""
    account_id, user_id = await _lost(sandbox, admin, "+15550008831", "delay_after")
    await _expire(pg, account_id)
    before = len(await admin.ledger())
    pruner.pool.may_connect = lambda _account_id: False
    assert await prune_once(pruner) == (0, 0)
    pruner.pool.may_connect = lambda _account_id: True
    async with pruner.login_step_lock(uuid.UUID(account_id)):
        assert await prune_once(pruner) == (0, 0)
    assert len(await admin.ledger()) == before
    assert await pg.fetchval("SELECT count(*) FROM accounts") == 1
    assert await prune_once(pruner) == (1, 0)
    assert sandbox.core.keys.for_user(user_id) == []


async def test_a_login_whose_key_cannot_be_checked_is_kept_for_the_next_pass(
    sandbox: Sandbox,
    admin: SandboxAdmin,
    pg: asyncpg.Connection[Any],
    pruner: TelegramRuntime,
    proxy: DcProxy,
) -> None:
    """Telegram unreachable: erasing the session would leave a key perhaps signed in that
    nobody can ever log out, so the login stays (saying why) and is checked again."""
    account_id, user_id = await _kept(sandbox, admin, pg, pruner, proxy, "+15550008841", 2)
    row = await pg.fetchrow("SELECT * FROM accounts WHERE id = $1", uuid.UUID(account_id))
    assert (row["state"], row["login_checks_failed"], row["last_error"]) == (
        "login_pending",
        2,
        "login_check_failed",
    )
    assert row["session_ciphertext"] is not None
    events = await pg.fetch(
        "SELECT details FROM account_events WHERE account_id = $1 AND kind = $2",
        uuid.UUID(account_id),
        "login_check_failed",
    )
    assert [json.loads(e["details"]) for e in events] == [{"error": "ConnectionError"}]
    await proxy.restore()
    assert await prune_once(pruner) == (1, 0)
    assert sandbox.core.keys.for_user(user_id) == []


async def test_a_kept_login_finished_later_no_longer_shows_the_failed_check(
    sandbox: Sandbox,
    admin: SandboxAdmin,
    pg: asyncpg.Connection[Any],
    pruner: TelegramRuntime,
    proxy: DcProxy,
) -> None:
    """A login kept because its key could not be checked, then finished by its user: the
    account is active with no error left from the check."""
    account_id, _ = await _kept(sandbox, admin, pg, pruner, proxy, "+15550008845", 1)
    async with serving(sandbox) as api:
        done = await api.post(
            f"/v1/accounts/{account_id}/login/code", json={"code": CODE}, headers=auth()
        )
        assert (done.status_code, done.json()["state"]) == (200, "active"), done.text
        shown = (await api.get(f"/v1/accounts/{account_id}", headers=auth())).json()
    assert (shown["state"], shown["last_error"]) == ("active", None)


async def test_a_step_of_a_login_dropped_under_it_signs_no_key_in(
    sandbox: Sandbox,
    admin: SandboxAdmin,
    pg: asyncpg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bulk drop of expired logins (any worker's) can take a login between its step's
    read and the step's sign-in: the step then sends nothing. Sent, with its answer lost,
    it would leave a key signed in at Telegram that no row stores."""
    created = await admin.create_account(phone="+15550008846", password="pw", authorized=False)
    user_id = created["user_id"]
    mark = login._may_be_signed_in

    async def dropped_first(ctx: Any, account_id: uuid.UUID, maybe: bool) -> bool:
        if maybe:  # the pass of another worker, at the worst moment
            await abandoned.prune(ctx.state.telegram)
        return await mark(ctx, account_id, maybe)

    async with serving(sandbox, telegram_request_timeout=1.0) as api:
        started = await api.post("/v1/accounts", json={"phone": "+15550008846"}, headers=auth())
        url = f"/v1/accounts/{started.json()['account_id']}/login"
        step = await api.post(f"{url}/code", json={"code": CODE}, headers=auth())
        assert step.json()["next"] == "password", step.text
        await _expire(pg, started.json()["account_id"])
        monkeypatch.setattr(login, "_may_be_signed_in", dropped_first)
        held = {"seconds": 5, "times": 1}
        await admin.add_fault(user_id, "delay_after", method="auth.checkPassword", **held)
        await admin.add_fault(user_id, "delay", method="users.getUsers", seconds=5)
        answer = await api.post(f"{url}/password", json={"password": "pw"}, headers=auth())
    assert (answer.status_code, answer.json()["error"]["code"]) == (409, "login_not_pending")
    assert await pg.fetchval("SELECT count(*) FROM accounts") == 0
    assert sandbox.core.keys.for_user(user_id) == []


async def test_a_login_unchecked_for_too_long_is_dropped_and_counted(
    sandbox: Sandbox,
    admin: SandboxAdmin,
    pg: asyncpg.Connection[Any],
    pruner: TelegramRuntime,
    proxy: DcProxy,
) -> None:
    """A DC unreachable for a day of passes does not keep the login for ever: it goes,
    counted apart (an operator's to look at: its key may still be signed in)."""
    account_id, _ = await _lost(sandbox, admin, "+15550008851", "delay_after")
    await _expire(pg, account_id)
    await pg.execute(
        "UPDATE accounts SET login_checks_failed = $2 WHERE id = $1",
        uuid.UUID(account_id),
        abandoned.MAX_FAILED_CHECKS - 1,
    )
    unchecked = _counted("tgflow_telegram_pruned_total", what="abandoned_login_unchecked")
    await proxy.cut()
    assert await prune_once(pruner) == (1, 0)
    assert await pg.fetchval("SELECT count(*) FROM accounts") == 0
    assert _counted("tgflow_telegram_pruned_total", what="abandoned_login_unchecked") == (
        unchecked + 1
    )
