"""The sandbox's shared state: world, keys, faults, ledger and live connections."""

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from .crypto import ServerRsaKey
from .faults import FaultBook
from .keys import KeyRecord, KeyStore
from .ledger import Ledger
from .state import World

log = logging.getLogger(__name__)


class LiveConnection(Protocol):
    """What the core needs from a connection to push updates or close it."""

    key: KeyRecord | None

    def push(self, body: bytes) -> None: ...

    def abort(self, reason: str) -> None: ...


PARTICIPANTS_LISTED = 10_000


@dataclass
class Settings:
    dc_id: int = 2
    public_host: str = "127.0.0.1"
    port: int = 0
    auth_key_duplicated: bool = False
    # Any key seen on two live connections is treated as duplicated when the
    # setting is on; Telegram also requires different IPs, but tests share one.
    random_id_duplicate: bool = False
    # A send repeating a random_id already used answers RANDOM_ID_DUPLICATE instead
    # of the original message (Telegram has been seen to do either).
    participants_listed: int = PARTICIPANTS_LISTED
    # How far channels.getParticipants lists a chat's members: past it, pages come
    # back empty while count still gives the whole chat, as Telegram's do (10,000).
    sign_up_unknown: bool = True
    # auth.signIn of a number no account has signs it up on the spot (tests need fresh
    # accounts); off, it answers auth.authorizationSignUpRequired, as Telegram does.


class Core:
    """Everything one sandbox DC knows, shared by its connections and admin API."""

    def __init__(self, rsa_key: ServerRsaKey, settings: Settings) -> None:
        self.rsa_key = rsa_key
        self.settings = settings
        self.world = World()
        self.keys = KeyStore()
        self.faults = FaultBook()
        self.ledger = Ledger()
        self.connections: dict[int, LiveConnection] = {}
        self.world.push = self._push

    @property
    def login_code(self) -> str:
        """Telegram's test-DC convention: the DC id repeated five times."""
        return str(self.settings.dc_id) * 5

    def _push(self, user_ids: Iterable[int], make: Callable[[int], object]) -> None:
        # One pass over live connections per event; updates are only built
        # for users who are online.
        wanted = set(user_ids)
        online: dict[int, list[LiveConnection]] = {}
        for conn in list(self.connections.values()):
            user_id = conn.key.user_id if conn.key is not None else None
            if user_id is not None and user_id in wanted:
                online.setdefault(user_id, []).append(conn)
        for user_id, conns in online.items():
            tl_object: Any = make(user_id)
            body = bytes(tl_object)
            for conn in conns:
                conn.push(body)

    def revoke_user_keys(self, user_id: int) -> int:
        """Terminate every authorization of an account (AUTH_KEY_UNREGISTERED)."""
        keys = self.keys.for_user(user_id)
        for key in keys:
            key.revoked = True
        return len(keys)

    def reset(self) -> None:
        """Forget all state and drop every connection."""
        for conn in list(self.connections.values()):
            conn.abort("reset")
        self.world = World()
        self.world.push = self._push
        self.keys.clear()
        self.faults.clear()
        self.ledger.clear()
        self.settings.auth_key_duplicated = False
        self.settings.random_id_duplicate = False
        self.settings.participants_listed = PARTICIPANTS_LISTED
        self.settings.sign_up_unknown = True
