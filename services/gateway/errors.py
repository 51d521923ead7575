"""Every error the API returns is JSON ``{error: {code, message, details?}}``."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.logs import get_logger
from shared.text import NUL_REFUSED

log = get_logger(__name__)


class ApiError(Exception):
    """An error with an HTTP status, a stable machine code and a sentence for humans."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return Response(
        orjson.dumps({"error": body}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _field(loc: tuple[Any, ...], tags: set[str]) -> str:
    """``('body', 'system.echo', 'params', 'x')`` -> ``params.x``."""
    parts = [str(p) for p in loc if p != "body" and p not in tags]
    return ".".join(parts)


def validation_response(exc: RequestValidationError, tags: set[str]) -> Response:
    errors = exc.errors()
    details = [
        {"field": _field(tuple(e["loc"]), tags), "message": e["msg"], "type": e["type"]}
        for e in errors
    ]
    types = {e["type"] for e in errors}
    if "json_invalid" in types:
        return error_response(400, "invalid_json", "The request body is not valid JSON.")
    if "union_tag_invalid" in types:
        bad = next(e for e in errors if e["type"] == "union_tag_invalid")
        tag = (bad.get("ctx") or {}).get("tag", "")
        return error_response(
            422,
            "unknown_job_type",
            f"Unknown job type {tag!r}; see GET /v1/job-types for the catalogue.",
            [{"field": "type", "message": "unknown job type", "type": "unknown_job_type"}],
        )
    hooks = [d for d in details if d["field"].rsplit(".", 1)[-1] == "webhook_url"]
    if hooks:
        return error_response(
            422, "invalid_webhook_url", f"Invalid webhook URL: {hooks[0]['message']}", hooks
        )
    # A NUL refused by a field's own validator (a peer's, say) is answered as one found
    # in any other field (routes.jobs.check_characters).
    nul = [d for d in details if d["type"] == "invalid_character"]
    if nul:
        return error_response(422, "invalid_character", NUL_REFUSED, nul)
    first = details[0]["field"] or "body"
    if any(d["field"].startswith("params") for d in details):
        return error_response(
            422, "invalid_params", f"Invalid job params: {first} is invalid.", details
        )
    return error_response(422, "invalid_request", f"Invalid request: {first} is invalid.", details)


def install(app: FastAPI, tags: set[str]) -> None:
    """Register handlers so no input reaches the client as a bare 500."""

    async def api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    async def request_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return validation_response(exc, tags)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, code, str(exc.detail), headers=headers)

    async def redis_down(_: Request, exc: Exception) -> Response:
        log.warning("redis unavailable", error=type(exc).__name__)
        return error_response(
            503,
            "redis_unavailable",
            "The job queue is unreachable; retry shortly.",
            headers={"Retry-After": "1"},
        )

    async def unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error", error=type(exc).__name__)
        return error_response(500, "internal_error", "An unexpected error occurred.")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, request_validation)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RedisConnectionError, redis_down)
    app.add_exception_handler(RedisTimeoutError, redis_down)
    app.add_exception_handler(Exception, unexpected)
