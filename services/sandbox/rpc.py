"""The method registry and the context every RPC handler receives."""

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from .core import Core
from .errors import RpcFail, unauthorized
from .keys import KeyRecord
from .state import Account

BOOL_TRUE = struct.pack("<I", 0x997275B5)
BOOL_FALSE = struct.pack("<I", 0xBC799737)
VECTOR = 0x1CB5C415


class CallSite(Protocol):
    """The connection a call arrived on."""

    no_updates: bool


@dataclass
class Call:
    """One RPC being executed: the sandbox, the caller's key and connection."""

    core: Core
    key: KeyRecord
    site: CallSite

    @property
    def account(self) -> Account:
        """The logged-in account, or 401 as Telegram answers."""
        user_id = self.key.user_id
        account = self.core.world.accounts.get(user_id) if user_id is not None else None
        if account is None or self.key.revoked:
            raise unauthorized()
        if account.banned:
            raise RpcFail(401, "USER_DEACTIVATED_BAN")
        return account


Handler = Callable[[Call, Any], object]
H = TypeVar("H", bound=Handler)


@dataclass(frozen=True)
class Method:
    name: str
    handler: Handler
    auth: bool


REGISTRY: dict[type, Method] = {}


def tl_name(request_cls: type) -> str:
    """TL method name of a request class, e.g. ``messages.sendMessage``."""
    namespace = request_cls.__module__.rsplit(".", 1)[-1]
    base = request_cls.__name__.removesuffix("Request")
    name = base[:1].lower() + base[1:]
    return name if namespace == "functions" else f"{namespace}.{name}"


def method(request_cls: type, *, auth: bool = True) -> Callable[[H], H]:
    """Register a handler for one request class."""

    def register(handler: H) -> H:
        REGISTRY[request_cls] = Method(tl_name(request_cls), handler, auth)
        return handler

    return register


def serialize(result: object) -> bytes:
    """TL bytes of a handler's result (object, Bool or Vector)."""
    if result is True:
        return BOOL_TRUE
    if result is False:
        return BOOL_FALSE
    if isinstance(result, bytes):
        return result
    if isinstance(result, list):
        return struct.pack("<Ii", VECTOR, len(result)) + b"".join(serialize(x) for x in result)
    tl_object: Any = result
    return bytes(tl_object)
