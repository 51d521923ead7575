"""The cursor ``telegram.get_dialogs`` hands back as ``next_offset``.

Telegram pages a chat list by the last listed dialog's top message: its date, its id
and its peer, which it takes only as an input peer, access hash included. The cursor
carries all of that, so that any worker's client can send the next request, one that
has never seen the peer too, and the folder it belongs to, so that it cannot be
passed to the other list. It is opaque to callers: 39 bytes, base64url.

Those fields are the account's own (a peer's access hash is valid for that account
only), so the cursor is bound to the account it lists (and so to its tenant: an account
id names one account of one tenant): its last 12 bytes are an
HMAC-SHA256 tag, truncated, over the account id and the 27 bytes before it, keyed by a
key of its own that gateway and workers derive from the signing secret
(``BaseAppSettings.dialog_cursor_key``). A cursor another account's listing returned,
or one altered or made by hand, fails the check; so does every cursor once the secret
changes. 96 bits are plenty for a tag that can only be guessed online, one request per
guess, and 27 + 12 bytes spell out in base64 without padding.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
import struct
import uuid
from dataclasses import dataclass

from pydantic_core import PydanticCustomError

_VERSION = 2  # 1: the same fields, no tag
_LAYOUT = struct.Struct("<BBIiBqq")  # version, folder, date, message id, kind, id, hash
_TAG_BYTES = 12
_TEXT = re.compile(r"[A-Za-z0-9_-]{52}")  # 27 + 12 bytes of base64url, no padding
_INT32_MAX = 2**31 - 1
INVALID = "invalid_cursor"


class PeerKind(enum.IntEnum):
    """What a cursor's peer is; NONE: no peer, the list past its pinned dialogs;
    PINNED: no peer, the list within its pinned dialogs, ``message_id`` of them listed."""

    NONE = 0
    USER = 1
    CHAT = 2  # a basic group: no access hash
    CHANNEL = 3
    PINNED = 4


_KINDS = frozenset(k.value for k in PeerKind)


@dataclass(frozen=True)
class DialogCursor:
    """Where the next page of a folder's chat list starts: after the dialog whose top
    message is ``message_id`` of ``date`` (Unix seconds) in the chat ``peer_id``."""

    folder: int
    date: int = 0
    message_id: int = 0
    kind: PeerKind = PeerKind.NONE
    peer_id: int = 0
    access_hash: int = 0

    def encode(self, key: bytes, account_id: uuid.UUID) -> str:
        """The cursor as text, tagged for the listing of ``account_id`` only."""
        raw = _LAYOUT.pack(
            _VERSION,
            self.folder,
            self.date,
            self.message_id,
            self.kind,
            self.peer_id,
            self.access_hash,
        )
        return base64.urlsafe_b64encode(raw + _tag(key, account_id, raw)).decode("ascii")

    @classmethod
    def pinned(cls, folder: int, listed: int) -> DialogCursor:
        """Within the folder's pinned dialogs, ``listed`` of them listed."""
        return cls(folder, message_id=listed, kind=PeerKind.PINNED)

    @classmethod
    def decode(cls, text: str, key: bytes, account_id: uuid.UUID) -> DialogCursor:
        """The cursor ``text`` spells, which ``encode`` wrote with ``key`` for
        ``account_id``; ``invalid_cursor`` for any other text."""
        raw = _raw(text)
        if not hmac.compare_digest(raw[-_TAG_BYTES:], _tag(key, account_id, raw[:-_TAG_BYTES])):
            raise _invalid()
        return cls.read(text)

    @classmethod
    def read(cls, text: str) -> DialogCursor:
        """The cursor ``text`` spells, its tag not checked (no key at hand: a form's
        check); ``invalid_cursor`` for anything ``encode`` could not have written."""
        fields = _LAYOUT.unpack(_raw(text)[:-_TAG_BYTES])  # the length is the pattern's
        version, folder, date, message_id, kind, peer_id, access_hash = fields
        if version != _VERSION or folder not in (0, 1) or kind not in _KINDS:
            raise _invalid()
        cursor = cls(folder, date, message_id, PeerKind(kind), peer_id, access_hash)
        if not cursor._consistent():
            raise _invalid()
        return cursor

    def _consistent(self) -> bool:
        if not 0 <= self.message_id <= _INT32_MAX:
            return False
        if self.kind is PeerKind.NONE:  # past the pinned dialogs: nothing else set
            return self.date == self.message_id == self.peer_id == self.access_hash == 0
        if self.kind is PeerKind.PINNED:  # some pinned dialogs listed: how many, only
            return self.message_id > 0 and self.date == self.peer_id == self.access_hash == 0
        return self.peer_id > 0 and (self.kind is not PeerKind.CHAT or self.access_hash == 0)


def _raw(text: str) -> bytes:
    if not _TEXT.fullmatch(text):
        raise _invalid()
    try:
        return base64.urlsafe_b64decode(text)
    except binascii.Error:
        raise _invalid() from None


def _tag(key: bytes, account_id: uuid.UUID, raw: bytes) -> bytes:
    """The tag that binds the cursor's bytes to the account they list."""
    return hmac.new(key, account_id.bytes + raw, hashlib.sha256).digest()[:_TAG_BYTES]


def _invalid() -> PydanticCustomError:
    return PydanticCustomError(
        INVALID, "offset is not a next_offset that telegram.get_dialogs returned for this account"
    )
