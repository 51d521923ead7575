"""Request and response helpers for the monitor API: JSON, errors, validated bodies."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from shared.text import nul_at

M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


def json_response(body: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS, default=str),
        status_code=status,
        media_type="application/json",
    )


def error_response(exc: ApiError) -> Response:
    body: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.details is not None:
        body["details"] = exc.details
    return json_response({"error": body}, exc.status)


def _validation_details(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"], "type": e["type"]}
        for e in exc.errors()
    ]


async def body_model(request: Request, model: type[M]) -> M:
    """The request's JSON body validated as ``model`` (an empty body counts as ``{}``)."""
    raw = await request.body()
    try:
        data = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid_json", "The request body is not valid JSON.") from None
    return validate(model, data)


def validate(model: type[M], data: Any) -> M:
    """``data`` as ``model``, or a 422; a NUL anywhere in it is refused (PostgreSQL, where
    silences, acknowledgements and notes are kept, cannot store it)."""
    where = nul_at(data)
    if where is not None:
        where = where or "body"
        message = "Text may not contain the NUL character (U+0000)."
        details = [{"field": where, "message": message, "type": "invalid_character"}]
        raise ApiError(422, "invalid_character", message, details)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = _validation_details(exc)
        first = details[0]["field"] or "body"
        raise ApiError(
            422, "invalid_request", f"Invalid request: {first} is invalid.", details
        ) from None


def query_model(request: Request, model: type[M]) -> M:
    return validate(model, dict(request.query_params))
