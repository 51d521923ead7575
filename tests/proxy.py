"""A TCP proxy in front of the sandbox DC, for the ways a network fails a client.

``cut`` closes every connection and refuses new ones until ``restore``; ``blackhole``
makes the connections open now carry nothing more, silently (a NAT or firewall that
forgot them: no reset ever comes), while new ones work; ``flood`` answers whatever a
client sends with Telegram's transport-level -429 instead of forwarding it.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

# What Telegram's transport sends instead of a frame when a client connects too often:
# -429 as the length, the sequence number and the body of a (full) frame.
TRANSPORT_FLOOD = struct.pack("<iii", -429, -429, -429)


@dataclass(eq=False)  # each pair is itself, kept in a set
class _Pair:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    dead: bool = False  # blackholed: what either side sends is swallowed


class DcProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.accepted = 0  # connections taken so far
        self.flood = False
        self._server: asyncio.Server | None = None
        self._pairs: set[_Pair] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        """The DC address to give a worker (``sandbox_dc``)."""
        return f"127.0.0.1:{self.port}"

    async def restore(self) -> None:
        """Listen (again, on the same port)."""
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for pair in list(self._pairs):
            for writer in (pair.client, pair.upstream):
                writer.transport.abort()
        self._pairs.clear()

    def blackhole(self) -> None:
        """The connections open now carry nothing more, and nobody is told."""
        for pair in self._pairs:
            pair.dead = True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            self._tasks.discard(task)
            return
        pair = _Pair(writer, up_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(
                self._pipe(pair, reader, up_writer, upstream=True),
                self._pipe(pair, up_reader, writer, upstream=False),
            )
        finally:
            self._pairs.discard(pair)
            self._tasks.discard(task)

    async def _pipe(
        self,
        pair: _Pair,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        upstream: bool,
    ) -> None:
        try:
            while data := await reader.read(65536):
                if pair.dead:
                    continue
                if upstream and self.flood:
                    pair.client.write(TRANSPORT_FLOOD)
                    await pair.client.drain()
                    continue
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def close(self) -> None:
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def dc_proxy(target_port: int) -> AsyncIterator[DcProxy]:
    """A running proxy to ``target_port``, closed after the block."""
    proxy = DcProxy(target_port)
    await proxy.restore()
    try:
        yield proxy
    finally:
        await proxy.close()
