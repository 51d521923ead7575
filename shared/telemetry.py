"""Tracing (OpenTelemetry, exported over OTLP when configured) and Sentry."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from shared.config import BaseAppSettings

SECRET_KEYS = ("session", "password", "secret", "token", "authorization", "api_key")


def setup_tracing(settings: BaseAppSettings, service: str, instance: str) -> TracerProvider:
    """Install an SDK tracer provider; spans leave the process only if OTLP is configured.

    The SDK is installed even without an exporter so that every log line and job
    record carries a real trace id to correlate on.
    """
    resource = Resource.create(
        {"service.name": f"tgflow-{service}", "service.instance.id": instance}
    )
    provider = TracerProvider(resource=resource)
    if settings.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = settings.otlp_endpoint.rstrip("/")
        if not endpoint.endswith("/v1/traces"):
            endpoint += "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    return provider


def inject_context() -> dict[str, str]:
    """The current W3C trace context as a carrier for a job envelope."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def extract_context(carrier: Mapping[str, str]) -> Context:
    return propagate.extract(dict(carrier))


def trace_id_of(carrier: Mapping[str, str]) -> str:
    """The trace id inside a ``traceparent`` carrier, or an empty string."""
    parts = carrier.get("traceparent", "").split("-")
    return parts[1] if len(parts) == 4 else ""


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(s in lowered for s in SECRET_KEYS)


def scrub(value: Any) -> Any:
    """Replace values under secret-looking keys, recursively."""
    if isinstance(value, Mapping):
        return {k: "[redacted]" if is_secret_key(str(k)) else scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def setup_sentry(settings: BaseAppSettings, service: str) -> None:
    """Initialise Sentry when a DSN is configured, scrubbing secrets from every event."""
    if settings.sentry_dsn is None:
        return
    import sentry_sdk

    def before_send(event: Any, hint: dict[str, Any]) -> Any:
        return scrub(event)

    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        environment=settings.env.value,
        server_name=service,
        send_default_pii=False,
        before_send=before_send,
    )
