"""Redis names that Telegram workers write and the gateway reads."""

from __future__ import annotations

import uuid

DISCONNECT_CHANNEL = "tgflow:tg:disconnect"
# An account's session was replaced: its owner drops the old client and logs the key out.
REPLACED_CHANNEL = "tgflow:tg:replaced"
PRESENCE_TTL = 90  # seconds; workers refresh it at least every 30


def presence_key(account_id: uuid.UUID | str) -> str:
    """Which worker holds this account's client, and since when."""
    return f"tgflow:tg:conn:{account_id}"


def stats_key(tenant: str) -> str:
    """Counters of Telegram calls per method and outcome, for the tenant."""
    return f"tgflow:tg:stats:{tenant}"
