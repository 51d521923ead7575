"""The monitor's own metrics (each component's, in one place)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

RULE_EVALUATION = Histogram(
    "tgflow_monitor_rule_evaluation_seconds",
    "Time to evaluate every rule once (one cycle).",
    buckets=_FAST,
)
CYCLE = Histogram(
    "tgflow_monitor_cycle_seconds",
    "Time of a whole cycle: collect, evaluate, persist, dispatch.",
    buckets=(*_FAST, 5, 10, 30),
)
NOTIFICATIONS = Counter(
    "tgflow_notifications_total",
    "Notifications by receiver and outcome (sent, failed).",
    ["receiver", "outcome"],
)
NOTIFICATION_ATTEMPTS = Counter(
    "tgflow_notification_attempts_total", "Delivery attempts, retries included.", ["receiver"]
)
NOTIFICATION_DURATION = Histogram(
    "tgflow_notification_duration_seconds",
    "Time to deliver a notification, retries included.",
    ["receiver"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
PERSIST_ERRORS = Counter(
    "tgflow_monitor_persist_errors_total",
    "Failed writes or reads of monitor state in Postgres.",
    ["what"],
)
