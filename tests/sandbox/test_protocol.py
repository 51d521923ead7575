"""MTProto service behaviour seen from a raw session built on Telethon's own state.

These go below TelegramClient to check what it relies on implicitly: new
session notices, bad_server_salt, time-window checks, containers, gzip_packed
bodies, ping/pong, and rpc_result answers.
"""

import asyncio
import io
import logging
import struct
from collections import defaultdict
from typing import Any

from telethon.crypto import AuthKey
from telethon.crypto import rsa as tl_rsa
from telethon.network.mtprotostate import MTProtoState
from telethon.sessions import StringSession
from telethon.tl import functions, types
from telethon.tl.core import GzipPacked, RpcResult
from telethon.tl.core.messagecontainer import MessageContainer

from services.sandbox.handshake import auth_key_of
from services.sandbox.server import Sandbox

from .conftest import AccountFactory

LOGGERS: Any = defaultdict(lambda: logging.getLogger("tests.sandbox.raw"))


class RawSession:
    """One MTProto session over the intermediate transport."""

    def __init__(self, session_string: str) -> None:
        self.state = MTProtoState(StringSession(session_string).auth_key, loggers=LOGGERS)

    async def open(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer.write(b"\xee\xee\xee\xee")

    def send(self, *bodies: bytes) -> list[int]:
        """Send bodies (as a container when several); returns their msg_ids."""
        buffer = io.BytesIO()
        ids = [self.state.write_data_as_message(buffer, body, True) for body in bodies]
        data = buffer.getvalue()
        if len(bodies) > 1:
            inner = struct.pack("<Ii", MessageContainer.CONSTRUCTOR_ID, len(bodies)) + data
            buffer = io.BytesIO()
            self.state.write_data_as_message(buffer, inner, False)
            data = buffer.getvalue()
        packet = self.state.encrypt_message_data(data)
        self.writer.write(struct.pack("<i", len(packet)) + packet)
        return ids

    async def receive(self) -> Any:
        async with asyncio.timeout(5):
            (length,) = struct.unpack("<i", await self.reader.readexactly(4))
            message = self.state.decrypt_message_data(await self.reader.readexactly(length))
        assert message is not None, "the client state ignored a server message"
        return message.obj

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def test_salt_containers_gzip_and_ping(sandbox: Sandbox, new_account: AccountFactory) -> None:
    account = await new_account()
    raw = RawSession(account["session_string"])
    await raw.open(sandbox.mtproto_port)
    try:
        (first,) = raw.send(bytes(functions.updates.GetStateRequest()))
        refused = await raw.receive()
        assert isinstance(refused, types.BadServerSalt)
        assert (refused.bad_msg_id, refused.error_code) == (first, 48)

        raw.state.salt = refused.new_server_salt
        big = functions.messages.GetHistoryRequest(types.InputPeerSelf(), 0, None, 0, 10, 0, 0, 0)
        packed = bytes(GzipPacked(bytes(functions.InvokeWithLayerRequest(1, big)) + bytes(600)))
        ping_id, state_id, history_id = raw.send(
            bytes(functions.PingRequest(ping_id=99)),
            bytes(functions.updates.GetStateRequest()),
            packed,
        )
        created = await raw.receive()
        assert isinstance(created, types.NewSessionCreated)
        assert (created.unique_id, created.server_salt) == (raw.state.id, raw.state.salt)
        answers = [await raw.receive() for _ in range(3)]
        pong = next(a for a in answers if isinstance(a, types.Pong))
        assert (pong.msg_id, pong.ping_id) == (ping_id, 99)
        results = {a.req_msg_id: a for a in answers if isinstance(a, RpcResult)}
        assert set(results) == {state_id, history_id}
        assert results[state_id].error is None
    finally:
        await raw.close()


async def test_clock_skew_gets_bad_msg_notification(
    sandbox: Sandbox, new_account: AccountFactory
) -> None:
    account = await new_account()
    raw = RawSession(account["session_string"])
    await raw.open(sandbox.mtproto_port)
    try:
        raw.state.time_offset = -3600  # an hour behind: msg_id too old
        (sent,) = raw.send(bytes(functions.updates.GetStateRequest()))
        notice = await raw.receive()
        assert isinstance(notice, types.BadMsgNotification)
        assert (notice.bad_msg_id, notice.error_code) == (sent, 16)
    finally:
        await raw.close()


async def test_unknown_constructor_answers_error_and_broken_body_closes(
    sandbox: Sandbox, new_account: AccountFactory
) -> None:
    account = await new_account()
    raw = RawSession(account["session_string"])
    await raw.open(sandbox.mtproto_port)
    try:
        raw.send(bytes(functions.updates.GetStateRequest()))
        raw.state.salt = (await raw.receive()).new_server_salt
        (unknown,) = raw.send(struct.pack("<I", 0x0BADC0DE) + bytes(16))
        assert isinstance(await raw.receive(), types.NewSessionCreated)
        answer = await raw.receive()
        assert isinstance(answer, RpcResult)
        assert answer.req_msg_id == unknown
        assert answer.error.error_message == "INPUT_METHOD_INVALID"
        truncated = bytes(functions.messages.SendMessageRequest(types.InputPeerSelf(), "hi"))[:9]
        raw.send(truncated)
        async with asyncio.timeout(5):
            assert await raw.reader.read() == b""  # closed; no answer
    finally:
        await raw.close()


def _saved_and_restored(key: AuthKey) -> AuthKey:
    session = StringSession()
    session.set_dc(2, "127.0.0.1", 443)
    session.auth_key = key
    restored = StringSession(session.save()).auth_key
    assert restored is not None
    return restored


def test_an_exchanged_key_survives_a_string_session_whatever_its_leading_bytes() -> None:
    """A key is 256 bytes with its leading zeros. The short form Telethon's client would
    compute for a g_ab with a leading zero byte comes back from a string session as
    another key (padded at the end), which is why the sandbox never agrees on it."""
    leading_zero = 2**2039 + 5  # 255 significant bytes
    for g_ab in (leading_zero, 2**2047 + 3, 7):
        key = auth_key_of(g_ab)
        assert len(key.key) == 256
        assert _saved_and_restored(key).key_id == key.key_id
    short = AuthKey(tl_rsa.get_byte_array(leading_zero))
    assert len(short.key) == 255
    assert _saved_and_restored(short).key_id != short.key_id
