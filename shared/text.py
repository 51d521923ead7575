"""Input PostgreSQL (or date arithmetic) cannot take: NUL characters, control characters
in URLs, and times outside the years 2-9998."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

NUL_REFUSED = "Text may not contain the NUL character (U+0000)."


def nul_at(value: Any, path: str = "") -> str | None:
    """The dotted path (under ``path``) of the first string in ``value``, keys included,
    holding U+0000, which PostgreSQL keeps in neither text nor JSON."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in str(key):
                return path
            found = nul_at(item, f"{path}.{key}" if path else str(key))
            if found:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = nul_at(item, f"{path}.{i}" if path else str(i))
            if found:
                return found
    return None


def non_finite_at(value: Any, path: str = "") -> str | None:
    """The dotted path of the first infinite or NaN number in ``value``: JSON has none,
    and a JSON encoder writes them as null, so they would be stored changed."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, item in items:
        found = non_finite_at(item, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def storable_time(value: datetime) -> datetime:
    """``value`` if PostgreSQL and date arithmetic can both take it: in UTC between the
    years 2 and 9998 (``0001-01-01T00:00+23:59`` is a year-0 time, and a window a month
    wide must not run off either end); else a ValueError, for a validator."""
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time is out of range") from None
    if not 2 <= utc.year <= 9998:
        raise ValueError("the time must fall between the years 2 and 9998")
    return value


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or c == "\x7f" for c in text)


class RefuseControlCharacters:
    """Answer ``400 invalid_character`` to a request whose path or query string holds a
    control character (U+0000 to U+001F, U+007F), percent-encoded or not: no id, filter
    or name this service takes contains one, and passed on they reach PostgreSQL (which
    refuses U+0000) or an HTTP client (which refuses a URL with them) as a 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            query = scope.get("query_string", b"").decode("latin-1")
            where = None
            if _has_control(scope["path"]):
                where = "path"
            elif query and _has_control(unquote(query.replace("+", " "))):
                where = "query string"
            if where is not None:
                await _refuse(send, f"The {where} holds a control character.")
                return
        await self.app(scope, receive, send)


async def _refuse(send: Send, message: str) -> None:
    body = orjson.dumps({"error": {"code": "invalid_character", "message": message}})
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
