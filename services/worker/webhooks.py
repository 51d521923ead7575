"""Deliver completion webhooks: claim due attempts, POST them signed, retry with backoff.

Every worker runs one deliverer. Attempts are claimed in Redis with a lease
(``shared/delivery/webhooks.py``), so deliverers on many workers share the work and a
crashed one's attempts are taken over when the lease ends. A 2xx answer delivers;
anything else (status, timeout, connection error) is retried with exponential backoff,
up to ``TGFLOW_WEBHOOK_MAX_ATTEMPTS``, then the delivery is marked failed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import structlog
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import Counter, Gauge, Histogram
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.worker.state import WorkerState
from shared.aio import message_unless, raise_if_cancelling, sleep_unless
from shared.db import Pool
from shared.delivery.lua import WEBHOOK_NUDGE
from shared.delivery.webhooks import EVENT_FINISHED, Claim, WebhookStatus, WebhookStore
from shared.jobs.envelope import from_micros, to_micros, utcnow
from shared.logs import get_logger
from shared.signing import sign

log = get_logger(__name__)

DELIVERIES = Counter(
    "tgflow_webhook_deliveries_total",
    "Webhook attempts by outcome: delivered, retry (will try again), failed (gave up).",
    ["outcome"],
)
LATENCY = Histogram(
    "tgflow_webhook_request_seconds",
    "Time a webhook POST took, to the answer or the error.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PENDING = Gauge("tgflow_webhooks_pending", "Webhook deliveries scheduled and not yet settled.")

USER_AGENT = "tgflow-webhooks/1"
_ERROR_BODY_CHARS = 200


class Blocked(Exception):
    """The URL's host resolves to an address webhooks may not reach."""


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: in [c/2, c] for c = min(cap, base * 2^(attempt-1)).

    Half of each delay is jitter, which spreads the retries of many deliveries to one
    receiver that came back, and the other half keeps the delays growing attempt by
    attempt (full jitter could retry a struggling receiver at once).
    """
    ceiling: float = min(cap, base * 2.0 ** max(0, attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def retry_after(response: httpx.Response) -> float | None:
    """A Retry-After in seconds (the date form is not honoured)."""
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


def redacted(url: str) -> str:
    """The URL without credentials or query, for logs and spans."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class Deliverer:
    """One worker's webhook deliverer; ``run`` until ``stop`` is set."""

    def __init__(self, state: WorkerState, blocking: Redis, stop: asyncio.Event) -> None:
        self.state = state
        self.settings = state.settings
        self.blocking = blocking
        self.stop = stop
        self.store = WebhookStore(state.redis, ttl=state.settings.job_status_ttl)
        self.http = httpx.AsyncClient(
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
            limits=httpx.Limits(max_connections=state.settings.webhook_concurrency),
        )
        self.inflight: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Claim and deliver until stopped; ride out Redis outages with backoff."""
        backoff = 0.1
        try:
            while not self.stop.is_set():
                pubsub = self.blocking.pubsub(ignore_subscribe_messages=True)
                try:
                    await pubsub.subscribe(WEBHOOK_NUDGE)
                    backoff = 0.1
                    while not self.stop.is_set():
                        wait = await self.step()
                        await message_unless(pubsub, self.stop, wait)  # a nudge ends it early
                except (RedisError, OSError) as exc:
                    raise_if_cancelling()
                    log.warning("webhook deliverer retrying", error=type(exc).__name__)
                finally:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                await sleep_unless(self.stop, backoff)
                backoff = min(backoff * 2, 5.0)
        finally:
            await self._finish_inflight()
            await self.http.aclose()

    async def step(self) -> float:
        """Start the attempts that are due; return how long to wait before looking again."""
        free = self.settings.webhook_concurrency - len(self.inflight)
        if free > 0:
            token = f"{self.state.instance_id}:{uuid.uuid4().hex[:12]}"
            lease_ms = int(self.settings.webhook_lease_seconds * 1000)
            for claim in await self.store.claim(to_micros(utcnow()), lease_ms, free, token):
                task = asyncio.create_task(self.deliver(claim), name=f"webhook-{claim.job_id}")
                self.inflight.add(task)
                task.add_done_callback(self.inflight.discard)
        pending, first_ms = await self.store.next_due()
        PENDING.set(pending)
        wait = self.settings.webhook_poll_seconds
        if first_ms is not None and len(self.inflight) < self.settings.webhook_concurrency:
            wait = min(wait, max(0.0, first_ms / 1000 - time.time()))
        return max(wait, 0.01)

    async def _finish_inflight(self) -> None:
        """On stop, let running POSTs end (they are bounded by the timeout), then cancel."""
        if not self.inflight:
            return
        _, late = await asyncio.wait(set(self.inflight), timeout=self.settings.webhook_timeout + 1)
        for task in late:
            task.cancel()  # its lease runs out and another worker retries the attempt
        await asyncio.gather(*late, return_exceptions=True)

    async def deliver(self, claim: Claim) -> None:
        """One attempt: POST, then settle it as delivered, retry or failed."""
        structlog.contextvars.bind_contextvars(
            job_id=claim.job_id, delivery_id=claim.delivery_id, attempt=claim.attempt
        )
        try:
            if claim.attempt > self.settings.webhook_max_attempts:
                # Claimed before by workers that died mid-attempt; do not try forever.
                await self._settle(claim, None, "no attempt left: earlier ones were cut off")
                return
            code, error, wait = await self._post(claim)
            await self._settle(claim, code, error, wait)
        except Exception as exc:  # a background task: log, never lose the error silently
            raise_if_cancelling()
            # Unsettled, the attempt's lease runs out and another one is made.
            log.warning("webhook attempt not settled", error=type(exc).__name__, detail=str(exc))
        finally:
            structlog.contextvars.unbind_contextvars("job_id", "delivery_id", "attempt")

    async def _post(self, claim: Claim) -> tuple[int | None, str | None, float | None]:
        """Send one signed attempt; return (HTTP status, error or None, Retry-After)."""
        body = claim.body()
        timestamp = str(int(time.time()))
        key = self.settings.webhook_signing_key(claim.tenant)
        headers = {
            "Content-Type": "application/json",
            "X-Tgflow-Event": EVENT_FINISHED,
            "X-Tgflow-Delivery": claim.delivery_id,
            "X-Tgflow-Attempt": str(claim.attempt),
            "X-Tgflow-Timestamp": timestamp,
            "X-Tgflow-Signature": sign(key, timestamp, body),
        }
        attributes: dict[str, Any] = {
            "http.request.method": "POST",
            "url.full": redacted(claim.url),
            "tgflow.job.id": claim.job_id,
            "tgflow.tenant": claim.tenant,
            "tgflow.webhook.delivery_id": claim.delivery_id,
            "tgflow.webhook.attempt": claim.attempt,
        }
        if claim.job.trace_id:
            attributes["tgflow.job.trace_id"] = claim.job.trace_id
        with self.state.tracer.start_as_current_span(
            "webhook POST", kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            start = time.perf_counter()
            code: int | None = None
            wait: float | None = None
            try:
                async with asyncio.timeout(self.settings.webhook_timeout):
                    await self._check_address(claim.url)
                    code, error, wait = await self._send(claim.url, body, headers)
            except TimeoutError:
                error = f"timed out after {self.settings.webhook_timeout:g}s"
            except Blocked as exc:
                error = str(exc)
            except (httpx.HTTPError, httpx.InvalidURL, UnicodeError) as exc:
                # (a host name no client can encode fails before any request is made)
                error = f"{type(exc).__name__}: {exc}"
            LATENCY.observe(time.perf_counter() - start)
            if code is not None:
                span.set_attribute("http.response.status_code", code)
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, error[:100]))
        return code, error, wait

    async def _send(
        self, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, str | None, float | None]:
        async with self.http.stream("POST", url, content=body, headers=headers) as response:
            if response.is_success:
                return response.status_code, None, None
            text = b""
            async for chunk in response.aiter_bytes():
                text += chunk
                if len(text) >= _ERROR_BODY_CHARS:
                    break
            detail = text[:_ERROR_BODY_CHARS].decode(errors="replace").strip()
            error = f"HTTP {response.status_code}" + (f": {detail}" if detail else "")
            return response.status_code, error, retry_after(response)

    async def _check_address(self, url: str) -> None:
        """Refuse hosts that resolve to loopback, private or link-local addresses."""
        if self.settings.webhook_allow_private:
            return
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port)
        except OSError as exc:
            raise httpx.ConnectError(f"cannot resolve {host}: {exc}") from None
        for *_, sockaddr in infos:
            if not ipaddress.ip_address(sockaddr[0]).is_global:
                raise Blocked(f"{host} resolves to a non-public address ({sockaddr[0]})")

    def _next_attempt_us(self, attempt: int, retry_after: float | None, now_us: int) -> int:
        settings = self.settings
        cap = settings.webhook_backoff_cap_seconds
        delay = backoff_delay(attempt, settings.webhook_backoff_seconds, cap)
        if retry_after is not None:
            delay = max(delay, min(retry_after, cap))
        return now_us + int(delay * 1_000_000)

    async def _settle(
        self, claim: Claim, code: int | None, error: str | None, wait: float | None = None
    ) -> None:
        now = to_micros(utcnow())
        fields = {"last_status_code": str(code or ""), "last_error": error or ""}
        next_us = 0
        if error is None:
            status, outcome = WebhookStatus.DELIVERED, "delivered"
            fields["delivered_at"] = str(now)
        elif claim.attempt < self.settings.webhook_max_attempts:
            status, outcome = WebhookStatus.PENDING, "retry"
            next_us = self._next_attempt_us(claim.attempt, wait, now)
            fields["next_attempt_at"] = str(next_us)
        else:
            status, outcome = WebhookStatus.FAILED, "failed"
        if not await self.store.settle(claim, status, fields, next_us=next_us):
            log.warning("webhook claim lost to another worker", status_code=code)
            return
        DELIVERIES.labels(outcome).inc()
        url = redacted(claim.url)
        if outcome == "delivered":
            log.info("webhook delivered", status_code=code, url=url)
        elif outcome == "retry":
            delay = round((next_us - now) / 1_000_000, 3)
            log.warning("webhook will retry", status_code=code, error=error, delay=delay, url=url)
        else:
            log.warning("webhook failed for good", status_code=code, error=error, url=url)
        if status is not WebhookStatus.PENDING:
            await record(self.state.db, claim, status, code, error, now)


_RECORD = """
INSERT INTO webhook_deliveries (job_id, tenant_id, delivery_id, url, status, attempts,
                                last_status_code, last_error, created_at, last_attempt_at,
                                delivered_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (job_id) DO UPDATE SET
    status = EXCLUDED.status, attempts = EXCLUDED.attempts,
    last_status_code = EXCLUDED.last_status_code, last_error = EXCLUDED.last_error,
    last_attempt_at = EXCLUDED.last_attempt_at, delivered_at = EXCLUDED.delivered_at,
    updated_at = now()
"""


async def record(
    db: Pool,
    claim: Claim,
    status: WebhookStatus,
    code: int | None,
    error: str | None,
    now_us: int,
) -> None:
    """Keep a settled delivery's outcome in Postgres, next to the job archive.

    Best effort: Redis already holds the outcome for ``TGFLOW_JOB_STATUS_TTL``.
    """
    at = from_micros(now_us)
    try:
        await db.execute(
            _RECORD,
            uuid.UUID(claim.job_id),
            claim.tenant,
            uuid.UUID(claim.delivery_id),
            claim.url,
            status.value,
            claim.attempt,
            code,
            error,
            from_micros(claim.created_us),
            at,
            at if status is WebhookStatus.DELIVERED else None,
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("webhook outcome not archived", error=type(exc).__name__)
