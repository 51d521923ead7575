"""JSON for everything that crosses Redis (jobs and results); pickle is never used."""

from __future__ import annotations

from typing import Any

import orjson


def _fallback(value: Any) -> Any:
    # ARQ hands failed-job exceptions to the serializer; keep their type and text only.
    if isinstance(value, BaseException):
        return {"exception": type(value).__name__, "message": str(value)[:500]}
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_fallback)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)
