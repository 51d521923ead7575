"""Client-side helpers for talking to a sandbox DC with stock Telethon.

Nothing here runs at import time: sandbox mode is entered by calling
:func:`register_sandbox_key` explicitly.
"""

import functools
import ipaddress
from typing import Any

from telethon import TelegramClient
from telethon.crypto import AuthKey
from telethon.crypto import rsa as tl_rsa
from telethon.network import ConnectionTcpFull
from telethon.sessions import StringSession

from .crypto import PUBLIC_KEY_PATH
from .keys import format_key_id

TEST_API_ID = 12345
TEST_API_HASH = "0123456789abcdef0123456789abcdef"  # the sandbox accepts any


@functools.cache
def _shipped_public_pem() -> str:
    return PUBLIC_KEY_PATH.read_text(encoding="ascii")


def register_sandbox_key(pem: str | None = None) -> None:
    """Let Telethon (process-wide) accept the sandbox's RSA key. Idempotent."""
    tl_rsa.add_key(pem or _shipped_public_pem(), old=False)


def _server_address(host: str) -> str:
    # StringSession stores a packed IP, so a hostname must be a literal address.
    return str(ipaddress.ip_address("127.0.0.1" if host == "localhost" else host))


def sandbox_session(
    dc_id: int, host: str, port: int, auth_key: bytes | None = None
) -> StringSession:
    """A StringSession pointing at the sandbox; without a key, connecting runs
    the real key exchange (such a session only serializes once it has a key)."""
    session = StringSession()
    session.set_dc(dc_id, _server_address(host), port)
    if auth_key is not None:
        if len(auth_key) != 256:
            raise ValueError("auth keys are 256 bytes")
        session.auth_key = AuthKey(auth_key)
    return session


def session_string(dc_id: int, host: str, port: int, auth_key: bytes) -> str:
    """The string form of a pre-authorised sandbox session."""
    saved: str = sandbox_session(dc_id, host, port, auth_key).save()
    return saved


def auth_key_id(session: str) -> str:
    """The hex auth key id of a session string, as the admin ledger shows it."""
    key = StringSession(session).auth_key
    if key is None:
        raise ValueError("session has no auth key")
    return format_key_id(key.key_id)


def make_client(
    session: str | StringSession,
    *,
    connection: type = ConnectionTcpFull,
    **kwargs: Any,
) -> TelegramClient:
    """A TelegramClient for the sandbox with fast-failing test defaults."""
    if isinstance(session, str):
        session = StringSession(session)
    options: dict[str, Any] = {
        "connection": connection,
        "connection_retries": 2,
        "retry_delay": 0,
        "request_retries": 2,
        "flood_sleep_threshold": 0,
        "timeout": 5,
    }
    options.update(kwargs)
    return TelegramClient(session, TEST_API_ID, TEST_API_HASH, **options)
