from __future__ import annotations

import uuid

import pytest

from shared.auth import InvalidToken, decode_token, mint_token
from shared.ids import uuid7

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


def test_uuid7_is_version_7_and_time_ordered() -> None:
    ids = [uuid7() for _ in range(2000)]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in ids)
    assert len(set(ids)) == len(ids)
    prefixes = [u.int >> 80 for u in ids]
    assert prefixes == sorted(prefixes)


def test_token_round_trip_and_rejections() -> None:
    token = mint_token(SECRET, "acme", scopes=["jobs:read"])
    principal = decode_token(SECRET, token)
    assert principal.tenant == "acme"
    assert principal.scopes == frozenset({"jobs:read"})
    with pytest.raises(InvalidToken):
        decode_token(SECRET + "x", token)
    with pytest.raises(InvalidToken):
        decode_token(SECRET, mint_token(SECRET, "acme", ttl_seconds=-5))
    with pytest.raises(ValueError, match="tenant"):
        mint_token(SECRET, "Bad Tenant!")
    with pytest.raises(ValueError, match="unknown scopes"):
        mint_token(SECRET, "acme", scopes=["root"])


def test_secrets_are_scrubbed_from_sentry_events_and_logs() -> None:
    from shared.telemetry import scrub

    session = "1BVtsOKABu0secret-session-string"
    event = {
        "extra": {"session_string": session, "nested": [{"password": "hunter2"}], "ok": 1},
        "request": {"headers": {"Authorization": "Bearer abc"}},
    }
    cleaned = scrub(event)
    assert session not in str(cleaned)
    assert "hunter2" not in str(cleaned)
    assert "Bearer abc" not in str(cleaned)
    assert cleaned["extra"]["ok"] == 1
