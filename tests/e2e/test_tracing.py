"""One trace per job: the worker's span is a child of the gateway's request span."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.e2e.conftest import workers_live
from tests.helpers import (
    Proc,
    auth,
    eventually,
    free_port,
    wait_for_status,
    wait_until_serving,
)


class Collector:
    """A minimal OTLP/HTTP receiver that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                with collector.lock:
                    for resource in request.resource_spans:
                        service = next(
                            a.value.string_value
                            for a in resource.resource.attributes
                            if a.key == "service.name"
                        )
                        for scope in resource.scope_spans:
                            for span in scope.spans:
                                collector.spans.append(
                                    {
                                        "service": service,
                                        "name": span.name,
                                        "trace_id": span.trace_id.hex(),
                                        "span_id": span.span_id.hex(),
                                        "parent": span.parent_span_id.hex(),
                                    }
                                )
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def collector() -> Iterator[tuple[Collector, str]]:
    c = Collector()
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), c.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield c, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_gateway_and_worker_spans_share_one_trace(
    collector: tuple[Collector, str], spawn: Callable[..., Proc]
) -> None:
    spans, endpoint = collector
    env = {"TGFLOW_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "50"}
    port = free_port()
    spawn("gateway", "--port", str(port), env=env)
    spawn("worker", env=env)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        await wait_until_serving(client)
        await workers_live(client, 1)
        response = await client.post("/v1/jobs", json={"type": "system.echo"}, headers=auth())
        job = await wait_for_status(client, response.json()["id"], {"succeeded"})
        # A caller's own trace context is continued: its trace, its span as the parent.
        caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        traced = await client.post(
            "/v1/jobs",
            json={"type": "system.echo"},
            headers={**auth(), "traceparent": f"00-{caller_trace}-{caller_span}-01"},
        )
        continued = await wait_for_status(client, traced.json()["id"], {"succeeded"})
        assert continued["trace_id"] == caller_trace

    def find() -> tuple[dict[str, Any], dict[str, Any]] | None:
        with spans.lock:
            request = [
                s
                for s in spans.spans
                if s["service"] == "tgflow-gateway" and s["name"] == "POST /v1/jobs"
            ]
            worker = [
                s
                for s in spans.spans
                if s["service"] == "tgflow-worker" and s["name"] == "job system.echo"
            ]
        return (request[0], worker[0]) if request and worker else None

    async def probe() -> Any:
        return find()

    request, worker = await eventually(probe, timeout=10, interval=0.1)
    assert worker["trace_id"] == request["trace_id"] == job["trace_id"]
    assert worker["parent"] == request["span_id"]

    async def continued_spans() -> Any:
        with spans.lock:
            mine = [s for s in spans.spans if s["trace_id"] == caller_trace]
        names = {s["name"] for s in mine}
        return mine if {"POST /v1/jobs", "job system.echo"} <= names else None

    mine = await eventually(continued_spans, timeout=10, interval=0.1)
    gateway_span = next(s for s in mine if s["name"] == "POST /v1/jobs")
    assert gateway_span["parent"] == caller_span
    job_span = next(s for s in mine if s["name"] == "job system.echo")
    assert job_span["parent"] == gateway_span["span_id"]
