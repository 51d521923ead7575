"""API tokens: HS256 JWTs carrying a tenant and scopes, minted by ``tgflow token create``."""

from __future__ import annotations

import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable

import jwt
from pydantic import BaseModel

ISSUER = "tgflow"
# Monitoring shows deployment-wide state (pools, Redis, every tenant's queues), so it has
# its own scopes rather than riding on a tenant's job scopes.
SCOPES = frozenset({"jobs:read", "jobs:write", "monitoring:read", "monitoring:write", "admin"})
TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class InvalidToken(Exception):
    """The bearer token is missing, malformed, expired or signed with another key."""


class Principal(BaseModel):
    tenant: str
    scopes: frozenset[str]
    subject: str
    token_id: str


def mint_token(
    secret: str,
    tenant: str,
    *,
    scopes: Iterable[str] = ("jobs:read", "jobs:write"),
    ttl_seconds: int = 30 * 86_400,
    subject: str = "cli",
) -> str:
    """Sign a token for ``tenant`` with ``scopes`` valid for ``ttl_seconds``."""
    if not TENANT_PATTERN.match(tenant):
        raise ValueError(f"tenant {tenant!r} must match {TENANT_PATTERN.pattern}")
    scope_list = sorted(set(scopes))
    unknown = set(scope_list) - SCOPES
    if unknown:
        raise ValueError(f"unknown scopes: {', '.join(sorted(unknown))}")
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": subject,
        "tenant": tenant,
        "scopes": scope_list,
        "iat": now,
        "exp": now + ttl_seconds,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def decode_token(secret: str, token: str) -> Principal:
    """Verify signature, issuer and expiry, and return who is calling."""
    return _verify(secret, token)[0]


def _verify(secret: str, token: str) -> tuple[Principal, float]:
    """The caller and the token's expiry (epoch seconds)."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            issuer=ISSUER,
            options={"require": ["exp", "iat", "tenant", "scopes", "jti"]},
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(str(exc)) from exc
    tenant, scopes = claims.get("tenant"), claims.get("scopes")
    if not isinstance(tenant, str) or not TENANT_PATTERN.match(tenant):
        raise InvalidToken("token carries no valid tenant")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise InvalidToken("token carries no valid scopes")
    principal = Principal(
        tenant=tenant,
        scopes=frozenset(scopes),
        subject=str(claims.get("sub", "")),
        token_id=str(claims["jti"]),
    )
    try:
        expires = float(claims["exp"])
    except (OverflowError, TypeError, ValueError):  # 10**400 passes PyJWT's own check
        raise InvalidToken("token carries no valid expiry") from None
    return principal, expires


class TokenVerifier:
    """``decode_token`` with a bounded cache of tokens already verified.

    A client sends the same token with every request, and checking its signature and
    claims costs more than the rest of a job submit's authentication. A cached token is
    still refused once it expires; only verified tokens are kept (least recently used
    leave first), so a forged token costs its full check every time.
    """

    def __init__(self, secret: str, *, size: int = 10_000) -> None:
        self.secret = secret
        self.size = size
        self._known: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    def verify(self, token: str) -> Principal:
        known = self._known.get(token)
        if known is not None:
            principal, expires = known
            if time.time() < expires:
                self._known.move_to_end(token)
                return principal
            del self._known[token]
        principal, expires = _verify(self.secret, token)
        self._known[token] = (principal, expires)
        if len(self._known) > self.size:
            self._known.popitem(last=False)
        return principal
