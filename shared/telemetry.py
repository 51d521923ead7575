"""Tracing (OpenTelemetry, exported over OTLP when configured) and Sentry."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, SynchronousMultiSpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from shared.config import BaseAppSettings

SECRET_KEYS = ("session", "password", "secret", "token", "authorization", "api_key")


class SpanSinks(SynchronousMultiSpanProcessor):
    """The provider's span processors, which can also be taken away again."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    @property
    def active(self) -> bool:
        return bool(self._span_processors)

    def remove_span_processor(self, span_processor: SpanProcessor) -> None:
        with self._lock:
            self._span_processors = tuple(
                p for p in self._span_processors if p is not span_processor
            )


class RecordWhileExported(Sampler):
    """Record spans while something takes them, and only then.

    With no exporter a recorded span is built, filled and dropped for nothing (about
    20 us for a job's two spans, see docs/benchmarks.md); a span that is not recorded
    still gets a real trace id, which log lines, job records and the trace context
    handed to the next process carry as before.
    """

    def __init__(self, sinks: SpanSinks) -> None:
        self.sinks = sinks

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        sampler = ALWAYS_ON if self.sinks.active else ALWAYS_OFF
        return sampler.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return "RecordWhileExported"


class Provider(TracerProvider):
    """A tracer provider that records spans only while it has a span processor."""

    def __init__(self, resource: Resource | None = None) -> None:
        self.sinks = SpanSinks()
        super().__init__(
            resource=resource,
            sampler=RecordWhileExported(self.sinks),
            active_span_processor=self.sinks,
        )

    def remove_span_processor(self, span_processor: SpanProcessor) -> None:
        self.sinks.remove_span_processor(span_processor)


def setup_tracing(settings: BaseAppSettings, service: str, instance: str) -> TracerProvider:
    """Install an SDK tracer provider; spans leave the process only if OTLP is configured,
    and are recorded only then.

    The SDK is installed even without an exporter so that every log line and job
    record carries a real trace id to correlate on.
    """
    resource = Resource.create(
        {"service.name": f"tgflow-{service}", "service.instance.id": instance}
    )
    provider = Provider(resource)
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


def _frames(event: Mapping[str, Any]) -> list[dict[str, Any]]:
    holders = [
        *event.get("exception", {}).get("values", []),
        *event.get("threads", {}).get("values", []),
    ]
    return [f for h in holders for f in (h.get("stacktrace") or {}).get("frames", [])]


def scrub_event(event: dict[str, Any]) -> dict[str, Any]:
    """An event fit to leave the process: no frame locals, no request body, no cookies,
    and every value under a secret-looking key (extra, contexts, headers, breadcrumbs)
    redacted.

    Local variables and bodies are dropped whatever their names: a secret passed down
    the stack sits under names like ``value`` or ``body_bytes`` that no key rule catches.
    """
    for frame in _frames(event):
        frame.pop("vars", None)
    request = event.get("request")
    if isinstance(request, dict):
        for part in ("data", "cookies"):
            request.pop(part, None)
    cleaned: dict[str, Any] = scrub(event)
    return cleaned


def setup_sentry(settings: BaseAppSettings, service: str, *, transport: Any = None) -> None:
    """Initialise Sentry when a DSN is configured, with no secret in any event.

    The SDK collects no frame locals, no request bodies, no user identity, no cookies
    and no query data; ``scrub_event`` enforces the same on whatever still reaches
    ``before_send``. ``transport`` replaces the HTTP transport (tests capture with it).
    """
    if settings.sentry_dsn is None:
        return
    import sentry_sdk

    def before_send(event: Any, hint: dict[str, Any]) -> Any:
        return scrub_event(event)

    def before_breadcrumb(crumb: Any, hint: dict[str, Any]) -> Any:
        return scrub(crumb)

    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        environment=settings.env.value,
        server_name=service,
        transport=transport,
        include_local_variables=False,
        max_request_body_size="never",
        # send_default_pii is deprecated in favour of data_collection (and off by default).
        data_collection={
            "user_info": False,
            "cookies": {"mode": "off"},
            "http_bodies": [],
            "stack_frame_variables": False,
            "database_query_data": False,
            "queues": False,
            "gen_ai": {"inputs": False, "outputs": False},
        },
        before_send=before_send,
        before_breadcrumb=before_breadcrumb,
    )
