"""Envelope encryption for Telegram sessions.

Each session is sealed with its own random AES-256-GCM data key; the data key is wrapped
by a vault key (key-encryption key) whose id is stored beside it. Rotation re-wraps data
keys under the newest vault key and never touches the session ciphertext; any listed key
keeps unwrapping until it is removed from TGFLOW_VAULT_KEYS. The account id is bound in
as associated data, so a sealed session cannot be moved to another account's row.
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.config import WorkerSettings

NONCE = 12


class VaultError(Exception):
    """A key is missing or malformed, or a sealed value does not authenticate."""


@dataclass(frozen=True)
class Sealed:
    key_id: str
    wrapped_key: bytes
    ciphertext: bytes


def _encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _decrypt(key: bytes, blob: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(blob[:NONCE], blob[NONCE:], aad)
    except (InvalidTag, ValueError) as exc:
        raise VaultError("sealed value does not authenticate") from exc


def check_key_id(key_id: str) -> None:
    """Refuse an id TGFLOW_VAULT_KEYS cannot carry: one with no characters, a ``:`` or
    ``,`` (they separate entries and their parts), or spaces at either end (which the
    list's reader trims away)."""
    if not key_id or ":" in key_id or "," in key_id or key_id != key_id.strip():
        raise VaultError(
            f"vault key id {key_id!r} is not a plain id: it needs at least one character,"
            " no ':' or ',', and no spaces at either end"
        )


class Vault:
    """Seals and opens session strings; the first key is the one new seals use."""

    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise VaultError("the vault needs at least one key")
        seen: set[str] = set()
        for key_id, key in keys:
            check_key_id(key_id)
            if len(key) != 32:
                raise VaultError(f"vault key {key_id!r} must be 32 bytes")
            if key_id in seen:  # one id would name two keys: seals and opens would disagree
                raise VaultError(
                    f"vault key id {key_id!r} is listed more than once; every key needs its"
                    " own id (`tgflow keys generate` makes a new key with a new id)"
                )
            seen.add(key_id)
        self.primary_id = keys[0][0]
        self._keys = dict(keys)

    @classmethod
    def parse(cls, value: str) -> Vault:
        """Read ``id:base64key,id:base64key`` (newest first)."""
        keys = []
        for entry in filter(None, (e.strip() for e in value.split(","))):
            key_id, sep, encoded = entry.partition(":")
            if not sep:
                raise VaultError("vault keys are written id:base64key")
            try:
                keys.append((key_id, base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))))
            except ValueError as exc:
                raise VaultError(f"vault key {key_id!r} is not base64") from exc
        return cls(keys)

    @classmethod
    def derived(cls, secret: str) -> Vault:
        """A development vault whose one key is derived from the signing secret."""
        key = HKDF(hashes.SHA256(), 32, salt=None, info=b"tgflow-vault-dev").derive(secret.encode())
        return cls([("dev", key)])

    @staticmethod
    def generate_entry(key_id: str | None = None) -> str:
        """A new ``id:base64key`` entry (a random id unless one is given)."""
        key_id = "k" + secrets.token_hex(4) if key_id is None else key_id
        check_key_id(key_id)
        key = base64.urlsafe_b64encode(AESGCM.generate_key(bit_length=256)).decode().rstrip("=")
        return f"{key_id}:{key}"

    def has_key(self, key_id: str) -> bool:
        return key_id in self._keys

    def _kek(self, key_id: str) -> bytes:
        try:
            return self._keys[key_id]
        except KeyError:
            raise VaultError(f"vault key {key_id!r} is not configured") from None

    def seal(self, plaintext: str, *, aad: bytes) -> Sealed:
        data_key = AESGCM.generate_key(bit_length=256)
        ciphertext = _encrypt(data_key, plaintext.encode(), aad)
        wrapped = _encrypt(self._kek(self.primary_id), data_key, self.primary_id.encode() + aad)
        return Sealed(self.primary_id, wrapped, ciphertext)

    def open(self, sealed: Sealed, *, aad: bytes) -> str:
        data_key = self._unwrap(sealed, aad)
        return _decrypt(data_key, sealed.ciphertext, aad).decode()

    def rewrap(self, sealed: Sealed, *, aad: bytes) -> Sealed:
        """The same sealed value with its data key wrapped by the primary key."""
        data_key = self._unwrap(sealed, aad)
        wrapped = _encrypt(self._kek(self.primary_id), data_key, self.primary_id.encode() + aad)
        return Sealed(self.primary_id, wrapped, sealed.ciphertext)

    def _unwrap(self, sealed: Sealed, aad: bytes) -> bytes:
        return _decrypt(self._kek(sealed.key_id), sealed.wrapped_key, sealed.key_id.encode() + aad)


def vault_from_settings(vault_keys: str | None, secret: str) -> Vault:
    """The vault of TGFLOW_VAULT_KEYS, or the development one; a VaultError names the
    setting."""
    if not vault_keys:
        return Vault.derived(secret)
    try:
        return Vault.parse(vault_keys)
    except VaultError as exc:
        raise VaultError(f"TGFLOW_VAULT_KEYS: {exc}") from exc


def settings_vault(settings: WorkerSettings) -> Vault:
    """The vault a worker's settings name; a VaultError is a configuration error."""
    keys = settings.vault_keys.get_secret_value() if settings.vault_keys else None
    return vault_from_settings(keys, settings.secret_key.get_secret_value())
