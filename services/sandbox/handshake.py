"""Server side of the MTProto auth key exchange (req_pq_multi .. dh_gen_ok)."""

import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from telethon import helpers
from telethon.crypto import AES, AuthKey
from telethon.crypto import rsa as tl_rsa
from telethon.extensions import BinaryReader
from telethon.tl import functions, types

from .crypto import DH_G, DH_PRIME, DH_SAFETY, ServerRsaKey, dh_exponent, make_pq, sha1
from .mtproto import read_object


def auth_key_of(g_ab: int) -> AuthKey:
    """The key a finished exchange agrees on: g_ab as 256 big-endian bytes, leading zero
    bytes kept, as Telegram derives it (a 2048-bit key).

    Telethon's client drops leading zero bytes. When g_ab has one (one exchange in 256)
    its key is then not this one: it finds the hash in dh_gen_ok wrong and starts a new
    exchange, exactly as it does against Telegram. Agreeing on the short key instead
    would hand the client a key that no string session can hold (they keep 256 bytes,
    padded at the end), so the session saved from it would name a key nobody knows.
    """
    return AuthKey(g_ab.to_bytes(256, "big"))


class HandshakeError(Exception):
    """The client deviated from the key exchange; the connection is closed."""


@dataclass
class _Exchange:
    nonce: int
    server_nonce: int
    p: int
    q: int
    new_nonce: int = 0
    a: int = 0
    tmp_key: bytes = b""
    tmp_iv: bytes = b""


def _int128() -> int:
    return int.from_bytes(os.urandom(16), "little", signed=True)


def _first_salt(new_nonce: int, server_nonce: int) -> int:
    nn = new_nonce.to_bytes(32, "little", signed=True)[:8]
    sn = server_nonce.to_bytes(16, "little", signed=True)[:8]
    value: int = struct.unpack("<q", bytes(x ^ y for x, y in zip(nn, sn, strict=True)))[0]
    return value


class Handshake:
    """Per-connection state of one key exchange; feed it plain message bodies."""

    def __init__(self, rsa_key: ServerRsaKey, on_key: Callable[[AuthKey, int], bool]) -> None:
        self._rsa = rsa_key
        self._on_key = on_key
        self._ex: _Exchange | None = None

    def handle(self, body: bytes) -> bytes:
        """Answer one unencrypted request of the exchange."""
        try:
            request = read_object(body)
        except Exception as exc:
            raise HandshakeError(f"unreadable handshake message: {exc}") from exc
        if isinstance(request, functions.ReqPqMultiRequest | functions.ReqPqRequest):
            return self._res_pq(request.nonce)
        if isinstance(request, functions.ReqDHParamsRequest):
            return self._server_dh_params(request)
        if isinstance(request, functions.SetClientDHParamsRequest):
            return self._dh_gen(request)
        raise HandshakeError(f"unexpected plain message {type(request).__name__}")

    def _res_pq(self, nonce: int) -> bytes:
        p, q = make_pq()
        self._ex = _Exchange(nonce=nonce, server_nonce=_int128(), p=p, q=q)
        return bytes(
            types.ResPQ(
                nonce=nonce,
                server_nonce=self._ex.server_nonce,
                pq=tl_rsa.get_byte_array(p * q),
                server_public_key_fingerprints=[self._rsa.fingerprint],
            )
        )

    def _expect(self, nonce: int, server_nonce: int) -> _Exchange:
        ex = self._ex
        if ex is None or ex.nonce != nonce or ex.server_nonce != server_nonce:
            raise HandshakeError("nonce mismatch")
        return ex

    def _decrypt_inner(self, encrypted: bytes) -> Any:
        value = self._rsa.decrypt_raw(encrypted)
        if value.bit_length() > 255 * 8:
            raise HandshakeError("RSA payload too large")
        data = value.to_bytes(255, "big")
        with BinaryReader(data[20:]) as reader:
            inner = reader.tgread_object()
        if sha1(bytes(inner)) != data[:20]:
            raise HandshakeError("inner data hash mismatch")
        return inner

    def _server_dh_params(self, req: Any) -> bytes:
        ex = self._expect(req.nonce, req.server_nonce)
        if req.public_key_fingerprint != self._rsa.fingerprint:
            raise HandshakeError("unknown RSA fingerprint")
        try:
            inner = self._decrypt_inner(req.encrypted_data)
        except HandshakeError:
            raise
        except Exception as exc:
            raise HandshakeError(f"bad p_q_inner_data: {exc}") from exc
        expected_pq = tl_rsa.get_byte_array(ex.p * ex.q)
        if (
            inner.nonce != ex.nonce
            or inner.server_nonce != ex.server_nonce
            or inner.pq != expected_pq
            or req.p != tl_rsa.get_byte_array(ex.p)
            or req.q != tl_rsa.get_byte_array(ex.q)
        ):
            raise HandshakeError("p_q_inner_data does not match")
        ex.new_nonce = inner.new_nonce
        ex.a, g_a = dh_exponent()
        answer = bytes(
            types.ServerDHInnerData(
                nonce=ex.nonce,
                server_nonce=ex.server_nonce,
                g=DH_G,
                dh_prime=DH_PRIME.to_bytes(256, "big"),
                g_a=g_a.to_bytes(256, "big"),
                server_time=int(time.time()),
            )
        )
        hashed = sha1(answer) + answer
        hashed += os.urandom(-len(hashed) % 16)
        ex.tmp_key, ex.tmp_iv = helpers.generate_key_data_from_nonce(ex.server_nonce, ex.new_nonce)
        return bytes(
            types.ServerDHParamsOk(
                nonce=ex.nonce,
                server_nonce=ex.server_nonce,
                encrypted_answer=AES.encrypt_ige(hashed, ex.tmp_key, ex.tmp_iv),
            )
        )

    def _client_inner(self, ex: _Exchange, encrypted: bytes) -> Any:
        if not ex.tmp_key or len(encrypted) % 16:
            raise HandshakeError("set_client_DH_params out of order")
        plain = AES.decrypt_ige(encrypted, ex.tmp_key, ex.tmp_iv)
        try:
            with BinaryReader(plain[20:]) as reader:
                inner = reader.tgread_object()
        except Exception as exc:
            raise HandshakeError(f"bad client_DH_inner_data: {exc}") from exc
        if not isinstance(inner, types.ClientDHInnerData):
            raise HandshakeError("expected client_DH_inner_data")
        if sha1(bytes(inner)) != plain[:20]:
            raise HandshakeError("client_DH_inner_data hash mismatch")
        return inner

    def _dh_gen(self, req: Any) -> bytes:
        ex = self._expect(req.nonce, req.server_nonce)
        inner = self._client_inner(ex, req.encrypted_data)
        g_b = int.from_bytes(inner.g_b, "big")
        if not DH_SAFETY <= g_b <= DH_PRIME - DH_SAFETY:
            raise HandshakeError("g_b out of range")
        auth_key = auth_key_of(pow(g_b, ex.a, DH_PRIME))
        self._ex = None
        if not self._on_key(auth_key, _first_salt(ex.new_nonce, ex.server_nonce)):
            return bytes(
                types.DhGenRetry(
                    nonce=ex.nonce,
                    server_nonce=ex.server_nonce,
                    new_nonce_hash2=auth_key.calc_new_nonce_hash(ex.new_nonce, 2),
                )
            )
        return bytes(
            types.DhGenOk(
                nonce=ex.nonce,
                server_nonce=ex.server_nonce,
                new_nonce_hash1=auth_key.calc_new_nonce_hash(ex.new_nonce, 1),
            )
        )
