from __future__ import annotations

import time
import uuid

import pytest

from shared.auth import InvalidToken, TokenVerifier, decode_token, mint_token
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


def test_token_verifier_caches_only_good_tokens_and_still_expires_them() -> None:
    verifier = TokenVerifier(SECRET, size=2)
    token = mint_token(SECRET, "acme", ttl_seconds=60)
    assert verifier.verify(token).tenant == "acme"
    assert verifier.verify(token) is verifier.verify(token)  # served from the cache
    forged = mint_token(SECRET + "x", "acme")
    for _ in range(2):  # refused every time, never remembered
        with pytest.raises(InvalidToken):
            verifier.verify(forged)
    assert forged not in verifier._known
    others = [mint_token(SECRET, tenant) for tenant in ("b1", "b2")]
    for other in others:
        verifier.verify(other)
    assert list(verifier._known) == others  # the least recently used left first
    brief = mint_token(SECRET, "acme", ttl_seconds=1)
    verifier.verify(brief)
    expires = verifier._known[brief][1]
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    with pytest.raises(InvalidToken):
        verifier.verify(brief)  # cached, but expired since
    assert brief not in verifier._known


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


def test_sentry_events_lose_frame_locals_bodies_and_secret_breadcrumbs() -> None:
    from shared.telemetry import scrub_event

    session = "1BVtsOKABu0secret-session-string"
    frame = {"function": "put", "vars": {"value": session}}
    event = {
        "exception": {"values": [{"stacktrace": {"frames": [frame]}}]},
        "request": {"data": {"session_string": session}, "cookies": {"a": session}},
        "breadcrumbs": {"values": [{"data": {"password": "hunter2", "n": 1}}]},
    }
    cleaned = scrub_event(event)
    assert session not in str(cleaned)
    assert "hunter2" not in str(cleaned)
    assert cleaned["exception"]["values"][0]["stacktrace"]["frames"][0]["function"] == "put"
    assert cleaned["breadcrumbs"]["values"][0]["data"]["n"] == 1
