"""The Sandbox: an MTProto listener plus the admin/model HTTP server, in one loop."""

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from types import TracebackType

import uvicorn

from .admin import create_app
from .connection import EofStampedReader, ServerConnection
from .core import Core, Settings
from .crypto import load_server_key
from .model import ModelEndpoint
from .mtproto import MsgIdClock

log = logging.getLogger(__name__)

_WILDCARDS = ("", "0.0.0.0", "::")
IDLE_TIMEOUT = 300.0  # Telethon pings every 60 s; silence this long means a dead peer


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers (the host process owns signals),
    and whose tick loop wakes at once when asked to exit instead of polling."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._wake = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):
            counter += 10  # on_tick refreshes the Date header every 10th tick
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)

    def request_exit(self) -> None:
        self.should_exit = True
        self._wake.set()


class Sandbox:
    """A local Telegram DC (MTProto on one port) and its admin API (another port).

    Usage in tests::

        async with Sandbox() as sandbox:
            ... sandbox.mtproto_port, sandbox.admin_url, sandbox.core ...
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        admin_port: int = 0,
        *,
        dc_id: int = 2,
        public_host: str | None = None,
    ) -> None:
        self.host = host
        self._port = port
        self._admin_port = admin_port
        self.settings = Settings(dc_id=dc_id, public_host=public_host or _advertised(host))
        self.model = ModelEndpoint()
        self._core: Core | None = None
        self._server: asyncio.Server | None = None
        self._http: _EmbeddedUvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self._live: set[ServerConnection] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._clock = MsgIdClock()
        self.mtproto_port = 0
        self.admin_port = 0

    @property
    def core(self) -> Core:
        if self._core is None:
            raise RuntimeError("sandbox not started")
        return self._core

    @property
    def admin_url(self) -> str:
        return f"http://{_url_host(self.settings.public_host)}:{self.admin_port}"

    async def start(self) -> None:
        """Load the RSA key, bind both ports and start serving."""
        rsa_key = await asyncio.to_thread(load_server_key)
        self._core = Core(rsa_key, self.settings)
        loop = asyncio.get_running_loop()

        def protocol() -> asyncio.StreamReaderProtocol:
            # asyncio.start_server, but with readers that timestamp EOF.
            return asyncio.StreamReaderProtocol(EofStampedReader(loop=loop), self._accept)

        self._server = await loop.create_server(
            protocol, self.host, self._port, backlog=4096, reuse_address=True
        )
        self.mtproto_port = self._server.sockets[0].getsockname()[1]
        self.settings.port = self.mtproto_port
        sock = _bind_http(self.host, self._admin_port)
        self.admin_port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self._core, self.model),
            log_level="warning",
            lifespan="off",
            access_log=False,
        )
        self._http = _EmbeddedUvicorn(config)
        self._http_task = asyncio.get_running_loop().create_task(self._http.serve([sock]))
        while not self._http.started:
            if self._http_task.done():
                await self._http_task
                raise RuntimeError("admin server failed to start")
            await asyncio.sleep(0.005)
        self._watchdog = asyncio.get_running_loop().create_task(self._reap_idle())
        log.info("sandbox DC %d on port %d", self.settings.dc_id, self.mtproto_port)

    async def _reap_idle(self) -> None:
        # One timer for all connections instead of a timeout around every read.
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(IDLE_TIMEOUT / 10)
            now = loop.time()
            for conn in list(self._live):
                if conn.idle_for(now) > IDLE_TIMEOUT:
                    conn.abort("idle")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conn_tasks.add(task)
        conn = ServerConnection(self.core, self._clock, reader, writer)
        self._live.add(conn)
        try:
            await conn.serve()
        finally:
            self._live.discard(conn)
            if task is not None:
                self._conn_tasks.discard(task)

    async def stop(self) -> None:
        """Stop accepting, drop every connection, stop the HTTP server."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        if self._server is not None:
            self._server.close()
        if self._core is not None:
            for conn in list(self._core.connections.values()):
                conn.abort("shutdown")
        if self._conn_tasks:
            await asyncio.wait(list(self._conn_tasks), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._http is not None and self._http_task is not None:
            self.model.closing.set()
            self._http.request_exit()
            await self._http_task
            self._http = self._http_task = None

    async def __aenter__(self) -> "Sandbox":
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _advertised(host: str) -> str:
    return "127.0.0.1" if host in _WILDCARDS or host == "localhost" else host


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _bind_http(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted
    # sockets that say so, and without it every keep-alive answer waits ~40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host or "0.0.0.0", port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock
