"""Every error case answers JSON {error: {code, message}} with the right status."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import jwt
import pytest

from shared.config import DEFAULT_SECRET
from tests.helpers import auth, gateway_client, token

ECHO = {"type": "system.echo", "params": {"message": "hi"}}


def error_of(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    assert body["message"]
    return body


async def test_unknown_job_type_is_422() -> None:
    async with gateway_client() as client:
        response = await client.post("/v1/jobs", json={"type": "nope.nothing"}, headers=auth())
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "unknown_job_type"
    assert error["details"][0]["field"] == "type"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"seconds": "soon"}, "params.seconds"),
        ({"seconds": -1}, "params.seconds"),
        ({}, "params.seconds"),
        ({"seconds": 1, "extra": True}, "params.extra"),
    ],
)
async def test_invalid_params_name_the_field(params: dict[str, Any], field: str) -> None:
    async with gateway_client() as client:
        response = await client.post(
            "/v1/jobs", json={"type": "system.sleep", "params": params}, headers=auth()
        )
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "invalid_params"
    assert field in [d["field"] for d in error["details"]]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "system.echo", "params": {"message": "a\x00"}}, "params.message"),
        ({"type": "system.echo", "params": {"data": {"k": ["x", "\x00"]}}}, "params.data.k.1"),
        ({"type": "system.echo", "params": {"data": {"k\x00": 1}}}, "params.data"),
        ({**ECHO, "idempotency_key": "k\x00"}, "idempotency_key"),
    ],
)
async def test_a_nul_character_is_refused_where_it_is(body: Any, field: str, redis: Any) -> None:
    """PostgreSQL keeps U+0000 in neither text nor JSON: such a job could not be archived."""
    async with gateway_client() as client:
        response = await client.post("/v1/jobs", json=body, headers=auth())
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "invalid_character"
    assert [d["field"] for d in error["details"]] == [field]
    assert await redis.zcard("tgflow:queue:control") == 0


@pytest.mark.parametrize(
    ("body", "code", "status"),
    [
        ({**ECHO, "defer_seconds": 1, "run_at": "2030-01-01T00:00:00Z"}, "invalid_request", 422),
        ({**ECHO, "run_at": "2030-01-01T00:00:00"}, "invalid_request", 422),
        ({**ECHO, "defer_seconds": 10**9}, "defer_too_long", 422),
        ({**ECHO, "idempotency_key": ""}, "invalid_request", 422),
        ({**ECHO, "surprise": 1}, "invalid_request", 422),
        ([1, 2, 3], "invalid_request", 422),
        ({"params": {}}, "invalid_request", 422),
    ],
)
async def test_bad_submissions(body: Any, code: str, status: int) -> None:
    async with gateway_client() as client:
        response = await client.post("/v1/jobs", json=body, headers=auth())
    assert response.status_code == status
    assert error_of(response)["code"] == code


async def test_malformed_json_is_400() -> None:
    async with gateway_client() as client:
        response = await client.post(
            "/v1/jobs",
            content=b'{"type": "system.echo",',
            headers={**auth(), "Content-Type": "application/json"},
        )
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_json"


async def test_body_over_limit_is_413_declared_or_streamed() -> None:
    big = {"type": "system.echo", "params": {"message": "x" * 5000}}
    async with gateway_client(max_body_bytes=2048) as client:
        declared = await client.post("/v1/jobs", json=big, headers=auth())

        async def chunks() -> Any:
            for _ in range(10):
                yield b"x" * 1024

        streamed = await client.post(
            "/v1/jobs", content=chunks(), headers={**auth(), "Content-Type": "application/json"}
        )
    for response in (declared, streamed):
        assert response.status_code == 413
        assert error_of(response)["code"] == "body_too_large"


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "unauthenticated"),
        ({"Authorization": "Bearer not-a-jwt"}, "invalid_token"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "unauthenticated"),
    ],
)
async def test_missing_or_bad_token_is_401(headers: dict[str, str], code: str) -> None:
    async with gateway_client() as client:
        for response in (
            await client.post("/v1/jobs", json=ECHO, headers=headers),
            await client.get("/v1/jobs", headers=headers),
        ):
            assert response.status_code == 401
            assert error_of(response)["code"] == code
            assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_expired_or_foreign_tokens_are_401() -> None:
    now = int(time.time())
    claims = {"iss": "tgflow", "tenant": "acme", "scopes": ["jobs:read"], "jti": "x"}
    expired = jwt.encode({**claims, "iat": now - 100, "exp": now - 10}, DEFAULT_SECRET)
    foreign = jwt.encode(
        {**claims, "iat": now, "exp": now + 60}, "another-secret-that-is-long-enough-for-hs256"
    )
    endless = jwt.encode({**claims, "iat": now, "exp": 10**400}, DEFAULT_SECRET)
    async with gateway_client() as client:
        for bad in (expired, foreign, endless):
            response = await client.get("/v1/jobs", headers={"Authorization": f"Bearer {bad}"})
            assert response.status_code == 401
            assert error_of(response)["code"] == "invalid_token"


async def test_missing_scope_is_403() -> None:
    async with gateway_client() as client:
        read_only = {"Authorization": f"Bearer {token(scopes=('jobs:read',))}"}
        response = await client.post("/v1/jobs", json=ECHO, headers=read_only)
    assert response.status_code == 403
    assert error_of(response)["code"] == "insufficient_scope"


@pytest.mark.parametrize("job_id", ["not-a-uuid", "01a1fe55-0000-7000-8000-000000000000"])
async def test_unknown_job_is_404(job_id: str) -> None:
    async with gateway_client() as client:
        response = await client.get(f"/v1/jobs/{job_id}", headers=auth())
    assert response.status_code == 404
    assert error_of(response)["code"] == "job_not_found"


async def test_bad_cursor_and_filters() -> None:
    async with gateway_client() as client:
        cursor = await client.get("/v1/jobs?cursor=%%%garbage", headers=auth())
        status = await client.get("/v1/jobs?status=exploded", headers=auth())
        limit = await client.get("/v1/jobs?limit=100000", headers=auth())
    assert cursor.status_code == 400
    assert error_of(cursor)["code"] == "invalid_cursor"
    assert status.status_code == limit.status_code == 422


async def test_unknown_route_and_method() -> None:
    async with gateway_client() as client:
        missing = await client.get("/v1/nothing-here", headers=auth())
        method = await client.put("/v1/jobs", headers=auth())
    assert error_of(missing)["code"] == "not_found"
    assert method.status_code == 405


async def test_redis_unreachable_is_503_within_a_second() -> None:
    async with gateway_client(redis_url="redis://127.0.0.1:1/0") as client:
        start = time.monotonic()
        response = await client.post("/v1/jobs", json=ECHO, headers=auth())
        elapsed = time.monotonic() - start
        ready = await client.get("/readyz")
    assert response.status_code == 503
    assert error_of(response)["code"] == "redis_unavailable"
    assert response.headers["Retry-After"] == "1"
    assert elapsed < 1.0
    assert ready.status_code == 503
    assert ready.json()["checks"]["redis"]["ok"] is False


async def test_health_routes_need_no_token() -> None:
    async with gateway_client() as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        metrics = await client.get("/metrics")
        await client.get("/v1/jobs", headers=auth())
        metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert 'tgflow_http_requests_total{method="GET",route="/v1/jobs",status="200"}' in metrics.text
    assert "tgflow_db_pool_size" in metrics.text


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs?type=a%00b",
        "/v1/dead-letters?error_code=%00",
        "/v1/ai/usage?provider=a%00",
        "/v1/monitoring/alerts/%00",
        "/v1/jobs/%0a",
    ],
)
async def test_a_control_character_in_the_url_is_400(path: str) -> None:
    async with gateway_client() as client:
        response = await client.get(path, headers=auth())
    assert response.status_code == 400, response.text
    assert error_of(response)["code"] == "invalid_character"


def _cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        (
            "GET",
            f"/v1/jobs?cursor={_cursor('9' * 21 + ':' + str(uuid.UUID(int=0)))}",
            None,
            400,
            "invalid_cursor",
        ),
        (
            "GET",
            f"/v1/dead-letters?cursor={_cursor('-' + '9' * 17 + ':' + str(uuid.UUID(int=0)))}",
            None,
            400,
            "invalid_cursor",
        ),
        ("GET", "/v1/dead-letters?since=0001-01-01T00:00:00%2B23:59", None, 422, "invalid_request"),
        ("GET", "/v1/ai/usage?until=0001-01-01T00:00:00Z", None, 422, "invalid_request"),
        ("POST", "/v1/jobs", {**ECHO, "defer_seconds": 1e12}, 422, "defer_too_long"),
        (
            "POST",
            "/v1/jobs",
            {"type": "system.echo", "params": {"data": 2**64}},
            422,
            "invalid_params",
        ),
        (
            "POST",
            "/v1/jobs",
            {"type": "system.echo", "params": {"data": -(2**63) - 1}},
            422,
            "invalid_params",
        ),
    ],
)
async def test_numbers_and_times_out_of_range_are_4xx(
    method: str, path: str, body: Any, status: int, code: str, redis: Any
) -> None:
    async with gateway_client() as client:
        response = await client.request(method, path, json=body, headers=auth())
    assert response.status_code == status, response.text
    assert error_of(response)["code"] == code
    assert await redis.zcard("tgflow:queue:control") == 0


async def test_params_json_cannot_carry_are_422() -> None:
    nested: Any = "x"
    for _ in range(255):
        nested = {"k": nested}
    bodies = [
        b'{"type": "system.echo", "params": {"data": {"\\ud800": "\\ud800"}}}',
        b'{"type": "system.echo", "params": {"data": [1, 1e400]}}',  # infinity: not JSON
        b'{"type": "system.echo", "params": {"data": {"x": NaN}}}',
        json.dumps({"type": "system.echo", "params": {"data": nested}}).encode(),
    ]
    async with gateway_client() as client:
        for raw in bodies:
            response = await client.post(
                "/v1/jobs", content=raw, headers={**auth(), "Content-Type": "application/json"}
            )
            assert response.status_code == 422, response.text
            assert error_of(response)["code"] == "invalid_params"
