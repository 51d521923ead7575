"""Spans are recorded only while something exports them; trace ids flow either way."""

from __future__ import annotations

from opentelemetry import context as otel_context
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.telemetry import Provider, extract_context, inject_context, trace_id_of


def test_without_an_exporter_spans_are_not_recorded_but_carry_trace_ids() -> None:
    tracer = Provider().get_tracer("test")
    with tracer.start_as_current_span("outer") as outer:
        assert not outer.is_recording()
        assert outer.get_span_context().is_valid
        carrier = inject_context()
        with tracer.start_as_current_span("inner") as inner:
            assert inner.get_span_context().trace_id == outer.get_span_context().trace_id
    assert trace_id_of(carrier) == format(outer.get_span_context().trace_id, "032x")


def test_a_caller_trace_is_continued_without_an_exporter() -> None:
    tracer = Provider().get_tracer("test")
    caller = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = extract_context({"traceparent": f"00-{caller}-00f067aa0ba902b7-01"})
    token = otel_context.attach(parent)
    try:
        with tracer.start_as_current_span("job") as span:
            assert format(span.get_span_context().trace_id, "032x") == caller
            assert trace_id_of(inject_context()) == caller
    finally:
        otel_context.detach(token)


def test_spans_are_recorded_while_a_processor_is_added_and_not_after() -> None:
    provider = Provider()
    tracer = provider.get_tracer("test")
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    with tracer.start_as_current_span("seen", attributes={"tgflow.job.id": "j1"}) as span:
        assert span.is_recording()
    provider.remove_span_processor(processor)
    with tracer.start_as_current_span("unseen") as span:
        assert not span.is_recording()
    found = exporter.get_finished_spans()
    assert [s.name for s in found] == ["seen"]
    assert found[0].attributes == {"tgflow.job.id": "j1"}
