"""Where each Telegram data centre is: a session names its DC, never its address.

A string session carries a DC id, an IP, a port and an auth key. The IP and port are
the importer's word, so trusting them would let anyone with an import token point a
worker at any host and port. Every client built from a session is connected to the
address this table (or, in sandbox mode, the configured sandbox DC) gives for its DC id.
"""

from __future__ import annotations

from telethon.client.telegrambaseclient import DEFAULT_IPV4_IP, DEFAULT_PORT
from telethon.sessions import StringSession

from shared.config import WorkerSettings

# Telegram's production DCs (IPv4, port 443). Telethon ships only DC 2's address
# (DEFAULT_IPV4_IP) and learns the others from help.getConfig after connecting;
# a session that starts on another DC needs its address before that.
PRODUCTION_DCS: dict[int, tuple[str, int]] = {
    1: ("149.154.175.53", DEFAULT_PORT),
    2: (DEFAULT_IPV4_IP, DEFAULT_PORT),
    3: ("149.154.175.100", DEFAULT_PORT),
    4: ("149.154.167.91", DEFAULT_PORT),
    5: ("91.108.56.130", DEFAULT_PORT),
}
KNOWN_DC_IDS = frozenset(PRODUCTION_DCS)


def dc_address(settings: WorkerSettings, dc_id: int) -> tuple[str, int] | None:
    """The address to reach ``dc_id`` at; None for a DC id Telegram does not have."""
    if dc_id not in PRODUCTION_DCS:
        return None
    if settings.telegram_sandbox:  # one local DC stands in for all of them
        host, _, port = settings.sandbox_dc.rpartition(":")
        return host, int(port)
    return PRODUCTION_DCS[dc_id]


def pin_dc(session: StringSession, settings: WorkerSettings) -> bool:
    """Point ``session`` at its DC's known address; False if its DC id is unknown."""
    address = dc_address(settings, session.dc_id)
    if address is None:
        return False
    session.set_dc(session.dc_id, *address)
    return True
