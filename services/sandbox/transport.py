"""MTProto TCP transports: detection from the first bytes, and packet codecs.

Supported: abridged, intermediate, padded intermediate, full, and the
obfuscated2 wrapper around the first three. Anything else closes the
connection; lengths are validated before any body is read, so a hostile
length prefix can never make the server buffer more than one packet.
"""

import os
import secrets
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Protocol
from zlib import crc32

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MAX_PACKET = 2 * 1024 * 1024
_REJECTED_PREFIXES = (b"POST", b"GET ", b"HEAD", b"OPTI", b"PUT ", b"PVrG", b"\x16\x03\x01\x02")


class TransportError(Exception):
    """The peer sent bytes that are not a valid transport stream."""


class ByteSource(Protocol):
    """Anything that can deliver exactly n bytes (raises IncompleteReadError at EOF)."""

    async def readexactly(self, n: int) -> bytes: ...


class PrefixedSource:
    """Serves already-consumed detection bytes before reading on."""

    def __init__(self, prefix: bytes, inner: ByteSource) -> None:
        self._prefix = prefix
        self._inner = inner

    async def readexactly(self, n: int) -> bytes:
        if not self._prefix:
            return await self._inner.readexactly(n)
        head, self._prefix = self._prefix[:n], self._prefix[n:]
        if len(head) == n:
            return head
        return head + await self._inner.readexactly(n - len(head))


class DecryptingSource:
    """Obfuscated2 inbound stream: AES-CTR over everything the client sends."""

    def __init__(self, inner: ByteSource, decrypt: Callable[[bytes], bytes]) -> None:
        self._inner = inner
        self._decrypt = decrypt

    async def readexactly(self, n: int) -> bytes:
        return self._decrypt(await self._inner.readexactly(n))


def _check_length(length: int, multiple_of: int = 1) -> int:
    if length <= 0 or length > MAX_PACKET or length % multiple_of:
        raise TransportError(f"bad packet length {length}")
    return length


class Codec(ABC):
    """Splits a byte stream into MTProto packets and frames outgoing ones."""

    name = "codec"

    @abstractmethod
    async def read_packet(self, src: ByteSource) -> bytes:
        """Read one whole packet payload."""

    @abstractmethod
    def encode_packet(self, data: bytes) -> bytes:
        """Frame one payload for sending."""


class AbridgedCodec(Codec):
    name = "abridged"

    async def read_packet(self, src: ByteSource) -> bytes:
        first = (await src.readexactly(1))[0]
        words = int.from_bytes(await src.readexactly(3), "little") if first >= 0x7F else first
        return await src.readexactly(_check_length(words * 4))

    def encode_packet(self, data: bytes) -> bytes:
        words = len(data) // 4
        if words < 0x7F:
            return bytes((words,)) + data
        return b"\x7f" + words.to_bytes(3, "little") + data


class IntermediateCodec(Codec):
    name = "intermediate"

    async def read_packet(self, src: ByteSource) -> bytes:
        (length,) = struct.unpack("<i", await src.readexactly(4))
        return await src.readexactly(_check_length(length))

    def encode_packet(self, data: bytes) -> bytes:
        return struct.pack("<i", len(data)) + data


class PaddedIntermediateCodec(IntermediateCodec):
    """Intermediate with 0-3 random trailing bytes that the reader drops."""

    name = "padded_intermediate"

    async def read_packet(self, src: ByteSource) -> bytes:
        data = await super().read_packet(src)
        extra = len(data) % 4
        return data[: len(data) - extra] if extra else data

    def encode_packet(self, data: bytes) -> bytes:
        return super().encode_packet(data + os.urandom(secrets.randbelow(4)))


class FullCodec(Codec):
    """Length, sequence number and CRC32 around every packet."""

    name = "full"

    def __init__(self) -> None:
        self._recv_seq = 0
        self._send_seq = 0

    async def read_packet(self, src: ByteSource) -> bytes:
        header = await src.readexactly(8)
        length, seq = struct.unpack("<ii", header)
        if length < 12 or length - 12 > MAX_PACKET:
            raise TransportError(f"bad full packet length {length}")
        if seq != self._recv_seq:
            raise TransportError(f"bad full sequence {seq}, expected {self._recv_seq}")
        rest = await src.readexactly(length - 8)
        body, checksum = rest[:-4], struct.unpack("<I", rest[-4:])[0]
        if crc32(header + body) != checksum:
            raise TransportError("bad crc32")
        self._recv_seq += 1
        return body

    def encode_packet(self, data: bytes) -> bytes:
        head = struct.pack("<ii", len(data) + 12, self._send_seq) + data
        self._send_seq += 1
        return head + struct.pack("<I", crc32(head))


class Transport:
    """The negotiated codec plus the byte source and outbound transform."""

    def __init__(
        self,
        codec: Codec,
        source: ByteSource,
        encrypt: Callable[[bytes], bytes] | None = None,
        obfuscated: bool = False,
    ) -> None:
        self.codec = codec
        self.source = source
        self._encrypt = encrypt
        self.name = f"obfuscated_{codec.name}" if obfuscated else codec.name

    async def read(self) -> bytes:
        """Read one packet payload."""
        return await self.codec.read_packet(self.source)

    def frame(self, payload: bytes) -> bytes:
        """Frame (and, when obfuscated, encrypt) one outgoing payload."""
        data = self.codec.encode_packet(payload)
        return self._encrypt(data) if self._encrypt else data


_TAGGED: dict[bytes, type[Codec]] = {
    b"\xef\xef\xef\xef": AbridgedCodec,
    b"\xee\xee\xee\xee": IntermediateCodec,
    b"\xdd\xdd\xdd\xdd": PaddedIntermediateCodec,
}


def _ctr(key: bytes, iv: bytes) -> Callable[[bytes], bytes]:
    # cryptography's CTR keeps the keystream position between calls, which is
    # exactly obfuscated2's "continuous buffer"; it is also far faster than a
    # pure-Python CTR.
    return Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor().update


def _obfuscated(header: bytes, src: ByteSource) -> Transport:
    reverse = header[8:56][::-1]
    decrypt = _ctr(header[8:40], header[40:56])
    encrypt = _ctr(reverse[:32], reverse[32:48])
    plain = decrypt(header)
    codec_cls = _TAGGED.get(plain[56:60])
    if codec_cls is None:
        raise TransportError("unknown obfuscated protocol tag")
    return Transport(codec_cls(), DecryptingSource(src, decrypt), encrypt, obfuscated=True)


async def detect(src: ByteSource) -> Transport:
    """Read the transport's opening bytes and return the matching transport."""
    first = await src.readexactly(1)
    if first == b"\xef":
        return Transport(AbridgedCodec(), src)
    head = first + await src.readexactly(3)
    if head == b"\xee\xee\xee\xee":
        return Transport(IntermediateCodec(), src)
    if head == b"\xdd\xdd\xdd\xdd":
        return Transport(PaddedIntermediateCodec(), src)
    if head in _REJECTED_PREFIXES:
        raise TransportError("not an MTProto transport")
    head += await src.readexactly(4)
    if head[4:8] == b"\0\0\0\0":
        # Full transport: length then sequence number 0 of the first packet.
        return Transport(FullCodec(), PrefixedSource(head, src))
    header = head + await src.readexactly(56)
    return _obfuscated(header, src)
