"""Envelope encryption of sessions and key rotation."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest

from services.cli.keys import Rotation, rotate, run_rotate
from services.cli.main import main
from services.worker.telegram.vault import Sealed, Vault, VaultError
from shared.config import WorkerSettings
from tests.telegram.conftest import insert_sealed

SESSION = "1BVtsOKABu" + "x" * 300


def test_seal_open_round_trip_binds_the_account() -> None:
    vault = Vault.parse(Vault.generate_entry("k1"))
    owner, other = uuid.uuid4().bytes, uuid.uuid4().bytes
    sealed = vault.seal(SESSION, aad=owner)
    assert sealed.key_id == "k1"
    assert SESSION.encode() not in sealed.ciphertext
    assert vault.open(sealed, aad=owner) == SESSION
    with pytest.raises(VaultError):
        vault.open(sealed, aad=other)  # moved to another account's row
    assert vault.seal(SESSION, aad=owner).ciphertext != sealed.ciphertext  # fresh data key


def test_rotation_rewraps_and_old_keys_keep_opening() -> None:
    old_entry, new_entry = Vault.generate_entry("old"), Vault.generate_entry("new")
    old = Vault.parse(old_entry)
    both = Vault.parse(f"{new_entry},{old_entry}")
    aad = uuid.uuid4().bytes
    sealed = old.seal(SESSION, aad=aad)
    assert both.open(sealed, aad=aad) == SESSION  # during rotation
    rewrapped = both.rewrap(sealed, aad=aad)
    assert rewrapped.key_id == "new"
    assert rewrapped.ciphertext == sealed.ciphertext  # data untouched, only the key rewrapped
    assert Vault.parse(new_entry).open(rewrapped, aad=aad) == SESSION  # old key retired
    with pytest.raises(VaultError, match="not configured"):
        Vault.parse(new_entry).open(sealed, aad=aad)


@pytest.mark.parametrize("bad", ["nokey", "k1:%%%", "k1:" + "QUJD", ""])
def test_malformed_keys_are_refused(bad: str) -> None:
    with pytest.raises(VaultError):
        Vault.parse(bad)


async def test_a_key_id_listed_twice_is_a_configuration_error_everywhere(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One id naming two keys would seal under one and rotate nothing (the id is the
    primary's already), and dropping the other entry would leave sessions unreadable."""
    from services.worker import main as worker_main

    new_entry, old_entry = Vault.generate_entry("k1"), Vault.generate_entry("k1")
    with pytest.raises(VaultError, match="'k1' is listed more than once"):
        Vault.parse(f"{new_entry},{old_entry}")
    with pytest.raises(VaultError, match="'k1' is listed more than once"):
        Vault.parse(f"{new_entry},{Vault.generate_entry('k2')},{old_entry}")
    monkeypatch.setenv("TGFLOW_VAULT_KEYS", f"{new_entry},{old_entry}")
    with pytest.raises(VaultError, match="TGFLOW_VAULT_KEYS: vault key id 'k1'"):
        worker_main.run(WorkerSettings())  # refused before the worker starts anything
    for command in (["keys", "rotate"], ["keys", "generate"]):
        capsys.readouterr()
        assert await asyncio.to_thread(main, command) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert "error: TGFLOW_VAULT_KEYS: vault key id 'k1' is listed more than once" in err
    # Nor does `keys generate` hand out an id the configuration has already.
    monkeypatch.setenv("TGFLOW_VAULT_KEYS", old_entry)
    assert main(["keys", "generate", "--id", "k1"]) == 2
    assert "already has a key with id 'k1'" in capsys.readouterr().err
    assert main(["keys", "generate", "--id", "k2"]) == 0
    assert capsys.readouterr().out.startswith("k2:")


@pytest.mark.parametrize("key_id", ["a:b", "x,y", " ", "", " k1"])
def test_keys_generate_refuses_an_id_the_vault_would_refuse(
    key_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Workers would refuse to start with the entry: it is never printed."""
    assert main(["keys", "generate", "--id", key_id]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert f"error: vault key id {key_id!r} is not a plain id" in err
    with pytest.raises(VaultError, match="is not a plain id"):
        Vault([(key_id, bytes(32))])


def test_production_requires_vault_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.config import InsecureSettingsError

    monkeypatch.setenv("TGFLOW_ENV", "production")
    monkeypatch.setenv("TGFLOW_SECRET_KEY", "a-real-secret-with-enough-entropy-0123456789")
    with pytest.raises(InsecureSettingsError, match="VAULT_KEYS"):
        WorkerSettings().ensure_safe()
    for blank in ("", "  "):  # an uncommented `TGFLOW_VAULT_KEYS=` line
        monkeypatch.setenv("TGFLOW_VAULT_KEYS", blank)
        with pytest.raises(InsecureSettingsError, match="VAULT_KEYS"):
            WorkerSettings().ensure_safe()
    monkeypatch.setenv("TGFLOW_VAULT_KEYS", Vault.generate_entry("k1"))
    WorkerSettings().ensure_safe()


async def test_keys_rotate_rewraps_every_stored_session(
    pg: asyncpg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    old_entry, new_entry = Vault.generate_entry("old"), Vault.generate_entry("new")
    old = Vault.parse(old_entry)
    await pg.execute("INSERT INTO tenants (id, name) VALUES ('acme', 'acme')")
    ids = [uuid.uuid4() for _ in range(5)]
    for i, account_id in enumerate(ids):
        await insert_sealed(
            pg, account_id, 1000 + i, old.seal(f"{SESSION}{i}", aad=account_id.bytes)
        )
    monkeypatch.setenv("TGFLOW_VAULT_KEYS", f"{new_entry},{old_entry}")
    assert await rotate(WorkerSettings(), batch=2) == Rotation(changed=5)
    assert await rotate(WorkerSettings()) == Rotation(changed=0)  # idempotent
    new_only = Vault.parse(new_entry)
    for i, account_id in enumerate(ids):
        row = await pg.fetchrow("SELECT * FROM accounts WHERE id = $1", account_id)
        assert row["session_key_id"] == "new"
        sealed = Sealed("new", bytes(row["session_wrapped_key"]), bytes(row["session_ciphertext"]))
        assert new_only.open(sealed, aad=account_id.bytes) == f"{SESSION}{i}"


async def test_keys_rotate_rewraps_replaced_sessions_waiting_to_be_logged_out(
    pg: asyncpg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replaced session is logged out by opening it: left under a key that is then
    dropped, it could never be, and its key would stay signed in at Telegram."""
    old_entry, new_entry = Vault.generate_entry("old"), Vault.generate_entry("new")
    old = Vault.parse(old_entry)
    await pg.execute("INSERT INTO tenants (id, name) VALUES ('acme', 'acme')")
    account_id = uuid.uuid4()
    await insert_sealed(pg, account_id, 1000, old.seal(f"{SESSION}new", aad=account_id.bytes))
    parked = old.seal(f"{SESSION}old", aad=account_id.bytes)
    await pg.execute(
        """INSERT INTO replaced_sessions (account_id, tenant_id, auth_key_hash,
               session_ciphertext, session_wrapped_key, session_key_id)
           VALUES ($1, 'acme', 'x', $2, $3, $4)""",
        account_id,
        parked.ciphertext,
        parked.wrapped_key,
        parked.key_id,
    )
    monkeypatch.setenv("TGFLOW_VAULT_KEYS", f"{new_entry},{old_entry}")
    assert await rotate(WorkerSettings(), batch=1) == Rotation(changed=2)
    assert await rotate(WorkerSettings()) == Rotation(changed=0)
    row = await pg.fetchrow("SELECT * FROM replaced_sessions")
    sealed = Sealed(
        row["session_key_id"], bytes(row["session_wrapped_key"]), bytes(row["session_ciphertext"])
    )
    assert Vault.parse(new_entry).open(sealed, aad=account_id.bytes) == f"{SESSION}old"


async def test_keys_rotate_skips_a_session_it_cannot_open_and_rotates_the_rest(
    pg: asyncpg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    old_entry, new_entry = Vault.generate_entry("old"), Vault.generate_entry("new")
    gone = Vault.parse(Vault.generate_entry("gone"))  # a key already dropped from the config
    old = Vault.parse(old_entry)
    await pg.execute("INSERT INTO tenants (id, name) VALUES ('acme', 'acme')")
    lost = uuid.UUID(int=1)  # sorts first, so it is met before every other row
    rows = [(lost, gone)] + [(uuid.uuid4(), old) for _ in range(4)]
    for i, (account_id, vault) in enumerate(rows):
        sealed = vault.seal(f"{SESSION}{i}", aad=account_id.bytes)
        await insert_sealed(pg, account_id, 1000 + i, sealed)
    monkeypatch.setenv("TGFLOW_VAULT_KEYS", f"{new_entry},{old_entry}")
    assert await rotate(WorkerSettings(), batch=2) == Rotation(changed=4, failed=[lost])
    keys = await pg.fetch("SELECT id, session_key_id FROM accounts")
    assert {r["id"]: r["session_key_id"] for r in keys if r["id"] != lost} == {
        account_id: "new" for account_id, _ in rows[1:]
    }
    capsys.readouterr()
    assert await asyncio.to_thread(run_rotate) == 1
    out, err = capsys.readouterr()
    assert "re-wrapped 0 session(s)" in out
    assert "1 session(s) could not be re-wrapped" in err
    assert str(lost) in err
    assert SESSION not in out + err
