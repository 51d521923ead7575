"""Telegram metrics: per account and MTProto method."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

CLIENTS_CONNECTED = Gauge("tgflow_telegram_clients_connected", "Telegram clients connected.")
ACCOUNT_CONNECTED = Gauge(
    "tgflow_telegram_account_connected",
    "1 while this worker holds a connected client for the account (absent otherwise).",
    ["account"],
)
CONNECTS = Counter("tgflow_telegram_connects_total", "Client connects.", ["outcome"])
DISCONNECTS = Counter("tgflow_telegram_disconnects_total", "Client disconnects.", ["reason"])
RECONNECTS = Counter("tgflow_telegram_reconnects_total", "Reconnect attempts.", ["account"])
REQUESTS = Counter(
    "tgflow_telegram_requests_total", "MTProto requests.", ["account", "method", "outcome"]
)
ERRORS = Counter("tgflow_telegram_errors_total", "MTProto errors.", ["account", "method", "code"])
FLOOD_WAITS = Counter(
    "tgflow_telegram_flood_waits_total", "FLOOD_WAIT answers.", ["account", "method"]
)
FLOOD_SECONDS = Counter(
    "tgflow_telegram_flood_wait_seconds_total",
    "Seconds of flood wait imposed.",
    ["account", "method"],
)
# Per account and method as a sum (with requests_total: the mean); the quantiles come
# from the histogram per method, where buckets times accounts would be too many series.
REQUEST_SECONDS = Counter(
    "tgflow_telegram_request_seconds_total",
    "Seconds spent in MTProto requests.",
    ["account", "method"],
)
REQUEST_LATENCY = Histogram(
    "tgflow_telegram_request_duration_seconds",
    "MTProto request latency.",
    ["method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PRUNED = Counter(
    "tgflow_telegram_pruned_total",
    "Rows dropped by age: abandoned logins (abandoned_login_unchecked: dropped after a day"
    " of checks that reached no one, its key perhaps still signed in) and old account"
    " events.",
    ["what"],
)
LOST_SIGN_INS = Counter(
    "tgflow_telegram_login_lost_sign_ins_total",
    "Login keys found signed in after a sign-in whose answer was lost, by what found them"
    " (a code or password step, which finishes the login; a delete, or the pruning of an"
    " abandoned login, which logs the key out).",
    ["step"],
)
BUDGET_WAITS = Counter(
    "tgflow_telegram_budget_waits_total", "Sends paced by the send budget.", ["scope"]
)


def account_connected(account_id: str, connected: bool) -> None:
    if connected:
        ACCOUNT_CONNECTED.labels(account_id).set(1)
        return
    with contextlib.suppress(KeyError):  # never shown as connected
        ACCOUNT_CONNECTED.remove(account_id)


def observe_request(account_id: str, method: str, ok: bool, seconds: float) -> None:
    """One MTProto request's count, time and (when answered) latency."""
    REQUESTS.labels(account_id, method, "ok" if ok else "error").inc()
    REQUEST_SECONDS.labels(account_id, method).inc(seconds)
    if ok:
        REQUEST_LATENCY.labels(method).observe(seconds)
