"""Hostile bytes on the MTProto port close only that connection."""

import asyncio
import gc
import os
import struct
import tracemalloc
from zlib import crc32

import pytest
from telethon import errors
from telethon.tl import functions

from services.sandbox.mtproto import build_plain
from services.sandbox.server import Sandbox

from .conftest import AccountFactory, ClientFactory, eventually

GARBAGE = [
    pytest.param(os.urandom(200), id="random-bytes"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http"),
    pytest.param(b"\xee\xee\xee\xee" + struct.pack("<i", 0x7FFFFFFF), id="huge-intermediate"),
    pytest.param(b"\xee\xee\xee\xee" + struct.pack("<i", -5), id="negative-intermediate"),
    pytest.param(b"\xef\x7f\xff\xff\xff", id="huge-abridged"),
    pytest.param(struct.pack("<ii", 1 << 30, 0), id="huge-full"),
    pytest.param(b"\xee\xee\xee\xee" + struct.pack("<i", 40) + bytes(40), id="zero-key-junk"),
    pytest.param(b"\xee\xee\xee\xee" + struct.pack("<i", 88) + os.urandom(88), id="bad-encrypted"),
]


def _full_packet(body: bytes, seq: int = 0, corrupt: bool = False) -> bytes:
    head = struct.pack("<ii", len(body) + 12, seq) + body
    return head + struct.pack("<I", crc32(head) ^ (1 if corrupt else 0))


async def _server_closes(port: int, payload: bytes, *, half_close: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        if half_close:
            writer.write_eof()
        async with asyncio.timeout(5):
            return await reader.read()  # b"" (or a transport error) then EOF
    finally:
        writer.close()
        await writer.wait_closed()


async def _busy_client(new_account: AccountFactory, new_client: ClientFactory) -> object:
    alice = await new_account()
    client = new_client(alice["session_string"])
    await client.connect()
    await client.send_message("me", "before")
    return client


@pytest.mark.parametrize("payload", GARBAGE)
async def test_bad_bytes_close_only_that_connection(
    sandbox: Sandbox, new_account: AccountFactory, new_client: ClientFactory, payload: bytes
) -> None:
    client = await _busy_client(new_account, new_client)
    leftover = await _server_closes(sandbox.mtproto_port, payload)
    assert len(leftover) <= 16  # at most a transport error, never a real answer
    assert (await client.send_message("me", "after")).text == "after"  # type: ignore[attr-defined]
    bad = [r for r in sandbox.core.ledger.records() if r.auth_key_id is None]
    assert bad
    assert all(r.closed is not None for r in bad)


async def test_truncated_frames_and_bad_checksums(sandbox: Sandbox) -> None:
    port = sandbox.mtproto_port
    truncated = b"\xee\xee\xee\xee" + struct.pack("<i", 100) + bytes(10)
    assert await _server_closes(port, truncated, half_close=True) == b""
    assert await _server_closes(port, _full_packet(bytes(40), corrupt=True)) == b""
    # A valid first packet (req_pq_multi) is answered; a sequence gap then closes.
    hello = build_plain(1 << 62, bytes(functions.ReqPqMultiRequest(nonce=7)))
    answer = await _server_closes(port, _full_packet(hello) + _full_packet(bytes(40), seq=5))
    (length,) = struct.unpack_from("<i", answer)
    assert len(answer) == length  # exactly one frame (resPQ), then EOF

    async def all_closed() -> bool:
        return not sandbox.core.connections

    await eventually(all_closed)


async def test_huge_length_is_refused_before_reading_the_body(sandbox: Sandbox) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", sandbox.mtproto_port)
    writer.write(b"\xee\xee\xee\xee" + struct.pack("<i", 64 * 1024 * 1024))
    await writer.drain()
    async with asyncio.timeout(5):
        assert await reader.read() == b""  # closed although no body was sent
    writer.close()
    await writer.wait_closed()


async def test_memory_does_not_grow_with_bad_connections(sandbox: Sandbox) -> None:
    port = sandbox.mtproto_port
    big = b"\xee\xee\xee\xee" + struct.pack("<i", 2_000_000) + os.urandom(1_500_000)

    async def round_of_abuse() -> None:
        for _ in range(10):
            await asyncio.gather(
                *(_server_closes(port, p, half_close=True) for p in (big, *[os.urandom(300)] * 9))
            )

    await round_of_abuse()  # warm caches and allocator pools
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await round_of_abuse()

        async def settled() -> bool:
            return not sandbox.core.connections

        await eventually(settled)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # 100 connections, 10 of them with 1.5 MB in flight: only ledger rows remain.
    assert grown < 512 * 1024, grown


async def test_unsupported_method_is_an_rpc_error(
    new_account: AccountFactory, new_client: ClientFactory
) -> None:
    alice = await new_account()
    client = new_client(alice["session_string"])
    await client.connect()
    with pytest.raises(errors.InputMethodInvalidError):
        await client(functions.account.GetAuthorizationsRequest())
    assert (await client.send_message("me", "still fine")).text == "still fine"
