"""AI metrics: requests, tokens, cost, latency, provider slots and breaker state."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter(
    "tgflow_ai_requests_total",
    "AI answers by outcome (ok, cached, rate_limited, server_error, timeout, ...).",
    ["provider", "model", "outcome"],
)
TOKENS = Counter(
    "tgflow_ai_tokens_total",
    "Tokens used, by kind (prompt, completion).",
    ["provider", "model", "kind"],
)
COST = Counter("tgflow_ai_cost_total", "Cost of AI calls per the catalogue.", ["provider", "model"])
DURATION = Histogram(
    "tgflow_ai_request_duration_seconds",
    "Time of one provider call.",
    ["provider", "model"],
    buckets=_BUCKETS,
)
CACHE_HITS = Counter("tgflow_ai_cache_hits_total", "Answers served from the cache.", ["provider"])
CACHE_MISSES = Counter(
    "tgflow_ai_cache_misses_total", "Cache lookups without an answer.", ["provider"]
)
SEMAPHORE_IN_USE = Gauge(
    "tgflow_ai_semaphore_in_use", "Provider slots held cluster-wide (last seen).", ["provider"]
)
BREAKER_STATE = Gauge(
    "tgflow_ai_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open.", ["provider"]
)
DEFERRED = Counter(
    "tgflow_ai_deferred_total",
    "AI job runs put back in the queue (slots, budgets, cool-down).",
    ["provider", "reason"],
)

BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}
