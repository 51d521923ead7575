"""MTProto 2.0 message envelopes: plain and encrypted, server side.

Key derivation comes from the client library (MTProtoState._calc_key), so both
ends derive keys with one implementation; only the direction differs (x=0 in,
x=8 out). AES-IGE is OpenSSL's, as in telethon.crypto (see fastaes).
"""

import os
import struct
import time
import zlib
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

from telethon.crypto import AuthKey
from telethon.extensions import BinaryReader
from telethon.network.mtprotostate import MTProtoState

from .fastaes import decrypt_ige, encrypt_ige

GZIP_PACKED = 0x3072CFA1
MSG_CONTAINER = 0x73F1F8DC
RPC_RESULT = 0xF35C6D01
MAX_UNPACKED = 4 * 1024 * 1024
MAX_CONTAINER_ITEMS = 1024


class ProtocolError(Exception):
    """A message that cannot be decrypted or parsed; it is dropped."""


@dataclass(frozen=True)
class Envelope:
    """One decrypted client message."""

    salt: int
    session_id: int
    msg_id: int
    seq_no: int
    body: bytes


@dataclass(frozen=True)
class PlainMessage:
    msg_id: int
    body: bytes


class MsgIdClock:
    """Server msg_ids: time-based, strictly increasing, odd as clients require."""

    def __init__(self) -> None:
        self._last = 0

    def next(self, *, response: bool) -> int:
        now = time.time()
        candidate = (int(now) << 32) | ((int((now % 1) * 1e9) << 2) & 0xFFFFFFFC)
        candidate = max(candidate, self._last + 4) & ~3
        self._last = candidate
        # 1 mod 4 answers a client message, 3 mod 4 is server-initiated.
        return candidate | (1 if response else 3)


def parse_plain(packet: bytes) -> PlainMessage:
    """Split an unencrypted message (auth_key_id already known to be 0)."""
    if len(packet) < 20:
        raise ProtocolError("short plain message")
    msg_id, length = struct.unpack_from("<qi", packet, 8)
    if length <= 0 or 20 + length > len(packet):
        raise ProtocolError("bad plain message length")
    return PlainMessage(msg_id, packet[20 : 20 + length])


def build_plain(msg_id: int, body: bytes) -> bytes:
    return struct.pack("<qqi", 0, msg_id, len(body)) + body


def key_id_of(packet: bytes) -> int:
    if len(packet) < 8:
        raise ProtocolError("packet shorter than an auth_key_id")
    value: int = struct.unpack_from("<Q", packet)[0]
    return value


def decrypt(auth_key: AuthKey, packet: bytes) -> Envelope:
    """Decrypt and authenticate one client->server message (x = 0)."""
    if len(packet) < 24 + 32 + 16 or (len(packet) - 24) % 16:
        raise ProtocolError("bad encrypted length")
    msg_key = packet[8:24]
    aes_key, aes_iv = MTProtoState._calc_key(auth_key.key, msg_key, True)
    plain = decrypt_ige(packet[24:], aes_key, aes_iv)
    if sha256(auth_key.key[88:120] + plain).digest()[8:24] != msg_key:
        raise ProtocolError("msg_key mismatch")
    salt, session_id, msg_id, seq_no, length = struct.unpack_from("<qqqii", plain)
    padding = len(plain) - 32 - length
    if length < 0 or not 12 <= padding <= 1024:
        raise ProtocolError("bad inner length")
    return Envelope(salt, session_id, msg_id, seq_no, plain[32 : 32 + length])


def encrypt(
    auth_key: AuthKey, salt: int, session_id: int, msg_id: int, seq_no: int, body: bytes
) -> bytes:
    """Encrypt one server->client message (x = 8)."""
    data = struct.pack("<qqqii", salt, session_id, msg_id, seq_no, len(body)) + body
    padding = os.urandom(-(len(data) + 12) % 16 + 12)
    msg_key = sha256(auth_key.key[96:128] + data + padding).digest()[8:24]
    aes_key, aes_iv = MTProtoState._calc_key(auth_key.key, msg_key, False)
    key_id = struct.pack("<Q", auth_key.key_id)
    return key_id + msg_key + encrypt_ige(data + padding, aes_key, aes_iv)


def constructor_of(body: bytes) -> int:
    if len(body) < 4:
        raise ProtocolError("empty body")
    value: int = struct.unpack_from("<I", body)[0]
    return value


def gunzip_bounded(body: bytes) -> bytes:
    """Unpack a gzip_packed body without trusting its compression ratio."""
    with BinaryReader(body) as reader:
        reader.read_int(signed=False)
        packed = reader.tgread_bytes()
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    data = inflater.decompress(packed, MAX_UNPACKED)
    if inflater.unconsumed_tail:
        raise ProtocolError("gzip_packed body too large")
    return data


def unwrap_gzip(body: bytes) -> bytes:
    """Return the inner bytes if ``body`` is gzip_packed, else ``body``."""
    if constructor_of(body) == GZIP_PACKED:
        return gunzip_bounded(body)
    return body


def split_container(body: bytes) -> list[tuple[int, int, bytes]]:
    """Split a msg_container into (msg_id, seq_no, body) items."""
    count = struct.unpack_from("<i", body, 4)[0] if len(body) >= 8 else -1
    if not 0 <= count <= MAX_CONTAINER_ITEMS:
        raise ProtocolError("bad container size")
    items, pos = [], 8
    for _ in range(count):
        if pos + 16 > len(body):
            raise ProtocolError("truncated container")
        msg_id, seq_no, length = struct.unpack_from("<qii", body, pos)
        pos += 16
        if length < 0 or pos + length > len(body):
            raise ProtocolError("bad container item length")
        items.append((msg_id, seq_no, body[pos : pos + length]))
        pos += length
    return items


def read_object(body: bytes) -> Any:
    """Deserialize one TL object with the client library's own reader."""
    with BinaryReader(body) as reader:
        return reader.tgread_object()


def rpc_result(req_msg_id: int, payload: bytes) -> bytes:
    return struct.pack("<Iq", RPC_RESULT, req_msg_id) + payload
