"""Dependency aliases, declared once.

All are ``async def``: FastAPI runs plain ``def`` dependencies in a thread pool, a
thread hand-off per request that these non-blocking checks do not need.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.gateway.errors import ApiError
from services.gateway.state import GatewayState
from shared.auth import InvalidToken, Principal

_bearer = HTTPBearer(auto_error=False, description="A token from `tgflow token create`.")


async def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.tgflow
    return state


State = Annotated[GatewayState, Depends(get_state)]


async def get_principal(
    state: State,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None:
        raise ApiError(
            401,
            "unauthenticated",
            "A bearer token is required.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        return state.tokens.verify(credentials.credentials)
    except InvalidToken as exc:
        raise ApiError(
            401,
            "invalid_token",
            f"The bearer token is not valid: {exc}.",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        ) from exc


def scope_checker(scope: str) -> object:
    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if scope not in principal.scopes and "admin" not in principal.scopes:
            raise ApiError(403, "insufficient_scope", f"The token lacks the {scope} scope.")
        return principal

    return check


Reader = Annotated[Principal, Depends(scope_checker("jobs:read"))]
Writer = Annotated[Principal, Depends(scope_checker("jobs:write"))]
MonitorReader = Annotated[Principal, Depends(scope_checker("monitoring:read"))]
MonitorWriter = Annotated[Principal, Depends(scope_checker("monitoring:write"))]
