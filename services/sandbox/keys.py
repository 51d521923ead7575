"""Auth keys the sandbox knows, with what each one is allowed to do."""

import os
import struct
import time
from dataclasses import dataclass, field

from telethon.crypto import AuthKey


@dataclass
class SrpChallenge:
    """One account.getPassword answer, kept until auth.checkPassword uses it."""

    srp_id: int
    b: int
    srp_b: bytes


@dataclass
class KeyRecord:
    """An auth key plus its login state (one Telegram 'authorization')."""

    auth_key: AuthKey
    salt: int
    created: float = field(default_factory=time.time)
    user_id: int | None = None
    revoked: bool = False
    duplicated: bool = False
    codes: dict[str, str] = field(default_factory=dict)
    password_user: int | None = None
    srp: SrpChallenge | None = None
    layer: int | None = None

    @property
    def key_id(self) -> int:
        value: int = self.auth_key.key_id
        return value

    @property
    def key_id_hex(self) -> str:
        return format_key_id(self.key_id)


def format_key_id(key_id: int) -> str:
    """How key ids appear in the admin API (hex, no precision loss in JSON)."""
    return f"{key_id:016x}"


def random_salt() -> int:
    value: int = struct.unpack("<q", os.urandom(8))[0]
    return value


class KeyStore:
    """All auth keys by key id."""

    def __init__(self) -> None:
        self._keys: dict[int, KeyRecord] = {}

    def add(self, auth_key: AuthKey, salt: int | None = None) -> KeyRecord | None:
        """Register a key; None if its id collides with a known key."""
        if auth_key.key_id in self._keys:
            return None
        record = KeyRecord(auth_key, random_salt() if salt is None else salt)
        self._keys[auth_key.key_id] = record
        return record

    def create(self, user_id: int | None = None) -> KeyRecord:
        """A fresh random key, as a completed key exchange would produce."""
        while True:
            record = self.add(AuthKey(os.urandom(256)))
            if record is not None:
                record.user_id = user_id
                return record

    def get(self, key_id: int) -> KeyRecord | None:
        return self._keys.get(key_id)

    def for_user(self, user_id: int) -> list[KeyRecord]:
        return [k for k in self._keys.values() if k.user_id == user_id]

    def __len__(self) -> int:
        return len(self._keys)

    def clear(self) -> None:
        self._keys.clear()
