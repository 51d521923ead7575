"""Run one decoded request: unwrap, check the key, apply faults, call the handler."""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from telethon.tl import functions, types

from . import methods
from .errors import METHOD_INVALID, RpcFail
from .faults import Fault
from .rpc import REGISTRY, Call, Method, serialize, tl_name

log = logging.getLogger(__name__)

_WRAPPERS = (
    functions.InvokeWithLayerRequest,
    functions.InitConnectionRequest,
    functions.InvokeWithoutUpdatesRequest,
    functions.InvokeAfterMsgRequest,
    functions.InvokeAfterMsgsRequest,
)
_ = methods  # imported for its handler registrations


class DropConnection(Exception):
    """Close the connection without answering (fault injection)."""


@dataclass(frozen=True)
class Reply:
    payload: bytes
    drop: bool = False
    hold: float = 0.0  # seconds to wait before answering (the call already ran)


@dataclass(frozen=True)
class Deferred:
    """Answer after ``seconds``; ``resume`` then executes the call."""

    seconds: float
    resume: Callable[[], Reply]


def error_payload(code: int, message: str) -> bytes:
    return bytes(types.RpcError(error_code=code, error_message=message))


def unwrap(call: Call, request: Any) -> Any:
    """Strip invokeWithLayer/initConnection/... and note what they say."""
    while isinstance(request, _WRAPPERS):
        if isinstance(request, functions.InvokeWithLayerRequest):
            call.key.layer = request.layer
        elif isinstance(request, functions.InvokeWithoutUpdatesRequest):
            call.site.no_updates = True
        request = request.query
    return request


def _gate(call: Call, spec: Method | None) -> None:
    if call.key.duplicated:
        raise RpcFail(406, "AUTH_KEY_DUPLICATED")
    if spec is None:
        raise RpcFail(400, METHOD_INVALID)
    if spec.auth:
        _ = call.account  # raises the 401 Telegram would give


def _fault_reply(fault: Fault) -> Reply:
    if fault.kind == "error":
        return Reply(error_payload(400, fault.error or "BAD_REQUEST"))
    seconds = fault.error_seconds(time.time())
    prefix = "FLOOD_WAIT" if fault.kind == "flood_wait" else "SLOWMODE_WAIT"
    return Reply(error_payload(420, f"{prefix}_{seconds}"))


def _fault_user(call: Call, request: Any) -> int | None:
    """Whose faults apply: the key's user, or before a login the user whose phone the
    request names (so a test can flood ``auth.sendCode`` for one account) or whose 2FA
    password the key is to give."""
    if call.key.user_id is not None:
        return call.key.user_id
    if call.key.password_user is not None:
        return call.key.password_user
    phone = getattr(request, "phone_number", None)
    if not isinstance(phone, str):
        return None
    return call.core.world.by_phone.get(methods.auth.normalize_phone(phone))


def _execute(call: Call, spec: Method, request: Any) -> Reply:
    try:
        payload = serialize(spec.handler(call, request))
    except RpcFail as fail:
        payload = error_payload(fail.code, fail.message)
    except Exception:
        # A sandbox bug must not look like a network failure: the client would
        # reconnect and resend forever. Telegram answers its own bugs with 500.
        log.exception("handler for %s failed", spec.name)
        payload = error_payload(500, "INTERNAL")
    after = call.core.faults.match(_fault_user(call, request), spec.name, "after")
    if after is not None and after.kind == "delay_after":
        return Reply(payload, hold=after.seconds)
    return Reply(payload, drop=after is not None)


def dispatch(call: Call, request: Any) -> Reply | Deferred:
    """Answer a request now, later (delay fault), or raise DropConnection."""
    inner = unwrap(call, request)
    spec = REGISTRY.get(type(inner))
    try:
        _gate(call, spec)
    except RpcFail as fail:
        if spec is None:
            log.info("unsupported method %s", tl_name(type(inner)))
        return Reply(error_payload(fail.code, fail.message))
    assert spec is not None
    log.debug("rpc %s from user %s", spec.name, call.key.user_id)
    fault = call.core.faults.match(_fault_user(call, inner), spec.name, "before")
    if fault is None:
        return _execute(call, spec, inner)
    if fault.kind == "drop_before":
        raise DropConnection(spec.name)
    if fault.kind == "delay":
        return Deferred(fault.seconds, lambda: _execute(call, spec, inner))
    return _fault_reply(fault)
