"""Secrets in transit from the gateway to a worker (session strings, 2FA passwords).

Job params are stored and shown (job records, the archive, the API), so a secret never
travels in them. The gateway seals it under a key derived from the signing secret,
parks it in Redis for minutes, and passes only a reference; the worker takes it once.
"""

from __future__ import annotations

import base64
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from redis.asyncio import Redis


def _key(secret: str) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"tgflow-transit").derive(secret.encode())


async def put(redis: Redis, secret: str, value: str, *, ttl: int = 600) -> str:
    ref = secrets.token_urlsafe(18)
    nonce = os.urandom(12)
    blob = nonce + AESGCM(_key(secret)).encrypt(nonce, value.encode(), ref.encode())
    await redis.set(f"tgflow:transit:{ref}", base64.b64encode(blob).decode(), ex=ttl)
    return ref


async def take(redis: Redis, secret: str, ref: str) -> str | None:
    """The secret behind ``ref``, removed as it is read; None if gone or tampered."""
    return _open(secret, ref, await redis.getdel(f"tgflow:transit:{ref}"))


async def peek(redis: Redis, secret: str, ref: str) -> str | None:
    """The secret behind ``ref``, left in place (for a job that may have to retry)."""
    return _open(secret, ref, await redis.get(f"tgflow:transit:{ref}"))


async def drop(redis: Redis, ref: str) -> None:
    await redis.delete(f"tgflow:transit:{ref}")


def _open(secret: str, ref: str, raw: str | bytes | None) -> str | None:
    if raw is None:
        return None
    blob = base64.b64decode(raw)
    try:
        return AESGCM(_key(secret)).decrypt(blob[:12], blob[12:], ref.encode()).decode()
    except InvalidTag:
        return None
