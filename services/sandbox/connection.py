"""One accepted TCP connection: transport, handshake, then the encrypted layer."""

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Coroutine
from typing import Any

from telethon.crypto import AuthKey

from .core import Core
from .dispatch import DropConnection
from .handshake import Handshake, HandshakeError
from .keys import KeyRecord
from .mtproto import MsgIdClock, ProtocolError, build_plain, decrypt, key_id_of, parse_plain
from .session import EncryptedLayer
from .transport import Transport, TransportError, detect

log = logging.getLogger(__name__)

DETECT_TIMEOUT = 10.0
MAX_WRITE_BUFFER = 8 * 1024 * 1024
AUTH_KEY_NOT_FOUND = struct.pack("<i", -404)


class EofStampedReader(asyncio.StreamReader):
    """A StreamReader that remembers when the peer's EOF arrived.

    The ledger closes a connection at that instant rather than when its task
    gets round to it, so a hand-off (close, then reconnect elsewhere) is never
    mistaken for two live connections on one key.
    """

    eof_at: float | None = None

    def feed_eof(self) -> None:
        if self.eof_at is None:
            self.eof_at = time.time()
        super().feed_eof()


class _Close(Exception):
    """Stop serving this connection (after flushing what was written)."""


class ServerConnection:
    """Serves one client until EOF, bad bytes, a fault or shutdown."""

    def __init__(
        self,
        core: Core,
        clock: MsgIdClock,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.core = core
        self.clock = clock
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.record = core.ledger.open(address)
        self.key: KeyRecord | None = None
        self.no_updates = False
        self._transport: Transport | None = None
        self._layer: EncryptedLayer | None = None
        self._handshake = Handshake(core.rsa_key, self._on_new_key)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.last_active = asyncio.get_running_loop().time()

    # -- interfaces used by the layers above ----------------------------

    def send_packet(self, payload: bytes) -> None:
        if self._closed or self._transport is None:
            return
        self.writer.write(self._transport.frame(payload))
        if self.writer.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self.abort("slow reader")

    def push(self, body: bytes) -> None:
        if self._layer is not None and not self._closed:
            self._layer.push(body)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(self._guard(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except DropConnection:
            self.abort("fault")

    def abort(self, reason: str) -> None:
        """Close at once (fault, reset, overload)."""
        if not self._closed:
            self._closed = True
            self.core.ledger.close(self.record, reason, self._eof_at())
            self.writer.close()

    def _eof_at(self) -> float | None:
        return self.reader.eof_at if isinstance(self.reader, EofStampedReader) else None

    def idle_for(self, now: float) -> float:
        return now - self.last_active

    def at_eof(self) -> bool:
        """True once the peer has closed, even if its last bytes are unread."""
        return self._closed or self._eof_at() is not None or self.reader.at_eof()

    # -- serving ----------------------------------------------------------

    async def serve(self) -> None:
        self.core.connections[self.record.id] = self
        reason = "eof"
        try:
            async with asyncio.timeout(DETECT_TIMEOUT):
                self._transport = await detect(self.reader)
            self.record.transport = self._transport.name
            loop = asyncio.get_running_loop()
            while not self._closed:
                packet = await self._transport.read()
                self.last_active = loop.time()
                self._on_packet(packet)
                await self.writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            reason = "eof"
        except TimeoutError:
            reason = "timeout"
        except (TransportError, ProtocolError, HandshakeError) as exc:
            log.info("closing connection %d: %s", self.record.id, exc)
            reason = "protocol"
        except DropConnection:
            reason = "fault"
        except _Close as exc:
            reason = str(exc)
        except Exception:
            log.exception("connection %d failed", self.record.id)
            reason = "error"
        finally:
            await self._shutdown(reason)

    async def _shutdown(self, reason: str) -> None:
        self.core.connections.pop(self.record.id, None)
        self.abort(reason)
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await self.writer.wait_closed()

    def _on_packet(self, packet: bytes) -> None:
        key_id = key_id_of(packet)
        if key_id == 0:
            plain = parse_plain(packet)
            answer = self._handshake.handle(plain.body)
            self.send_packet(build_plain(self.clock.next(response=True), answer))
            return
        layer = self._layer_for(key_id)
        layer.receive(decrypt(layer.key.auth_key, packet))

    def _layer_for(self, key_id: int) -> EncryptedLayer:
        if self._layer is not None and self._layer.key.key_id == key_id:
            return self._layer
        key = self.core.keys.get(key_id)
        if key is None:
            # Telegram's transport error for an unknown key; clients map it
            # to "auth key not found" and must create a new one.
            self.send_packet(AUTH_KEY_NOT_FOUND)
            raise _Close("unknown auth key")
        if self._layer is not None:
            raise ProtocolError("a second auth key on one connection")
        self._bind(key)
        self._layer = EncryptedLayer(self.core, key, self, self.clock)
        return self._layer

    def _bind(self, key: KeyRecord) -> None:
        self.key = key
        others = [c for c in self.core.connections.values() if c is not self and c.key is key]
        for other in others:
            if isinstance(other, ServerConnection) and other.at_eof():
                # Its EOF is already in the buffer; record the close now so a
                # clean hand-off is not reported as an overlap.
                other.abort("eof")
        self.core.ledger.bind_key(self.record, key.key_id)
        live = [c for c in others if not (isinstance(c, ServerConnection) and c._closed)]
        if live and self.core.settings.auth_key_duplicated:
            key.duplicated = True

    def _on_new_key(self, auth_key: AuthKey, salt: int) -> bool:
        return self.core.keys.add(auth_key, salt) is not None
