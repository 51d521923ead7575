"""HMAC-SHA256 signatures for outgoing webhooks (alert notifications and job deliveries).

The signed message is ``<timestamp>.<body>``, so a receiver checks both origin and
freshness; the header value is ``sha256=<hex digest>``.
"""

from __future__ import annotations

import hashlib
import hmac


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """HMAC-SHA256 over ``timestamp.body``, as the webhook signature header carries it."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def derive_key(secret: str, purpose: str) -> str:
    """A separate key for one purpose, so one secret never signs two kinds of thing."""
    return hmac.new(secret.encode(), purpose.encode(), hashlib.sha256).hexdigest()
