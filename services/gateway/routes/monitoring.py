"""/v1/monitoring: the monitor's API through the gateway, under the same bearer token.

Reads need the monitoring:read scope, changes (acknowledge, silence, resolve)
monitoring:write: this is deployment-wide state, not one tenant's.
The monitor answers over HTTP; when it cannot, clients get 503 monitor_unavailable
with Retry-After, never a 500 and never a hang.
"""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter, Request, Response

from services.gateway.deps import MonitorReader, MonitorWriter, State
from services.gateway.errors import ApiError
from shared.logs import get_logger

log = get_logger(__name__)
router = APIRouter(prefix="/v1/monitoring", tags=["monitoring"])
MONITOR_KEY_HEADER = "X-Tgflow-Monitor-Key"
_PASS_HEADERS = ("content-type", "retry-after")


def monitor_client(base_url: str, timeout: float, key: str) -> httpx.AsyncClient:
    """The gateway's client for the monitor; internal traffic ignores proxy variables."""
    return httpx.AsyncClient(
        base_url=base_url, timeout=timeout, headers={MONITOR_KEY_HEADER: key}, trust_env=False
    )


def _unavailable(message: str) -> ApiError:
    return ApiError(503, "monitor_unavailable", message, headers={"Retry-After": "5"})


async def _forward(state: State, request: Request) -> Response:
    client = state.monitor
    if client is None:
        raise _unavailable("The monitor is not configured.")
    body = await request.body() if request.method in ("POST", "DELETE") else None
    try:
        answer = await client.request(
            request.method,
            request.url.path,
            params=request.url.query,
            content=body,
            headers={"Content-Type": "application/json"} if body else None,
        )
    except httpx.TimeoutException:
        log.warning("monitor timed out", path=request.url.path)
        raise _unavailable("The monitor did not answer in time; retry shortly.") from None
    except httpx.HTTPError as exc:
        log.warning("monitor unreachable", path=request.url.path, error=type(exc).__name__)
        raise _unavailable("The monitor is unreachable; retry shortly.") from None
    if answer.status_code >= 500 and answer.status_code != 503:
        raise ApiError(502, "monitor_error", "The monitor failed to answer this request.")
    headers = {k: v for k, v in answer.headers.items() if k.lower() in _PASS_HEADERS}
    return Response(answer.content, status_code=answer.status_code, headers=headers)


_GETS: list[tuple[str, str]] = [
    ("/pool/status", "Connection pools per process and their health"),
    ("/pool/metrics", "Every collected Postgres series"),
    ("/pool/statistics", "Pool utilisation over the retained window"),
    ("/pool/slow-queries", "Statements over the slow threshold"),
    ("/redis/status", "Redis connectivity, memory, hit rate, load"),
    ("/redis/metrics", "Every collected Redis series"),
    ("/redis/info", "Redis INFO"),
    ("/redis/slow-log", "Redis slow log"),
    ("/alerts/active", "Open alerts (pending, firing, nodata, error)"),
    ("/alerts/history", "Alert episodes, newest first"),
    ("/alerts/statistics", "Counts by rule and severity, mean time to resolve"),
    ("/silences", "Silences"),
    ("/rules", "Alert rules with their last evaluation"),
    ("/system/health", "Collectors, components and host"),
    ("/metrics/all", "Every current series"),
    ("/dashboard/overview", "What a status page needs, in one call"),
    ("/notifications", "Recent notification deliveries"),
]


def _reader() -> Any:
    async def read(request: Request, state: State, _: MonitorReader) -> Response:
        return await _forward(state, request)

    return read


for _path, _summary in _GETS:
    router.add_api_route(_path, _reader(), methods=["GET"], summary=_summary)


@router.get("/alerts/{alert_id}", summary="One alert episode")
async def get_alert(alert_id: str, request: Request, state: State, _: MonitorReader) -> Response:
    return await _forward(state, request)


@router.post("/alerts/{alert_id}/acknowledge", summary="Mute repeats until the alert resolves")
async def acknowledge(alert_id: str, request: Request, state: State, _: MonitorWriter) -> Response:
    return await _forward(state, request)


@router.post("/alerts/{alert_id}/silence", summary="Silence this alert's labels for a while")
async def silence_alert(
    alert_id: str, request: Request, state: State, _: MonitorWriter
) -> Response:
    return await _forward(state, request)


@router.post("/alerts/{alert_id}/resolve", summary="Resolve an alert by hand")
async def resolve(alert_id: str, request: Request, state: State, _: MonitorWriter) -> Response:
    return await _forward(state, request)


@router.post("/silences", summary="Create a silence from label matchers")
async def create_silence(request: Request, state: State, _: MonitorWriter) -> Response:
    return await _forward(state, request)


@router.delete("/silences/{silence_id}", summary="Expire a silence")
async def expire_silence(
    silence_id: str, request: Request, state: State, _: MonitorWriter
) -> Response:
    return await _forward(state, request)
