"""A span per MTProto request: named by the method, under the job's span, with the
account id and never the session."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.sandbox.admin_client import SandboxAdmin
from services.worker.telegram.client import mtproto_name
from shared.telemetry import Provider
from tests.telegram.conftest import import_account
from tests.telegram.test_jobs import run


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Every span ended in this process during the test (the SDK is installed once)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, Provider):
        provider = Provider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    yield exporter
    provider.remove_span_processor(processor)
    processor.shutdown()


def _named(found: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in found if s.name == name]


def test_request_names_are_the_mtproto_methods() -> None:
    from telethon.tl import functions

    assert mtproto_name(functions.messages.SendMessageRequest(peer=None, message="")) == (
        "messages.sendMessage"
    )
    assert mtproto_name(functions.channels.GetMessagesRequest(None, [])) == "channels.getMessages"
    assert mtproto_name(functions.PingRequest(1)) == "ping"


async def test_each_mtproto_request_is_a_span_under_its_job(
    api: httpx.AsyncClient, admin: SandboxAdmin, spans: InMemorySpanExporter
) -> None:
    account, created = await import_account(api, admin)
    await admin.create_account(username="carol_sb", first_name="Carol")
    sent = await run(api, "telegram.send_message", account_id=account["id"], peer="me", text="hi")
    resolved = await run(api, "telegram.resolve", account_id=account["id"], peer="@carol_sb")
    assert sent["status"] == resolved["status"] == "succeeded"
    found = spans.get_finished_spans()
    jobs = {s.attributes["tgflow.job.type"]: s for s in found if s.name.startswith("job ")}
    for job_type, method in [
        ("telegram.send_message", "messages.sendMessage"),
        ("telegram.resolve", "contacts.resolveUsername"),  # what get_entity sent
    ]:
        (request,) = _named(found, f"telegram {method}")
        job = jobs[job_type]
        assert request.parent is not None
        assert request.parent.span_id == job.context.span_id
        assert request.context.trace_id == job.context.trace_id
        attributes: dict[str, Any] = dict(request.attributes or {})
        assert attributes == {
            "rpc.system": "mtproto",
            "rpc.method": method,
            "tgflow.account.id": account["id"],
        }
    session = created["session_string"]
    for span in found:  # the session string is in no span, attribute or event
        texts = [str(v) for v in (span.attributes or {}).values()]
        texts += [str(v) for e in span.events for v in (e.attributes or {}).values()]
        assert not any(session in t or session[:40] in t for t in texts)


async def test_a_failed_request_span_carries_the_error(
    api: httpx.AsyncClient, admin: SandboxAdmin, spans: InMemorySpanExporter
) -> None:
    account, created = await import_account(api, admin)
    await admin.add_fault(created["user_id"], "revoke")
    failed = await run(api, "telegram.get_me", account_id=account["id"])
    assert failed["error"]["code"] == "auth_key_unregistered"
    # Telethon's connect asks for the user too: each request its own failed span.
    requests = [
        s
        for s in _named(spans.get_finished_spans(), "telegram users.getUsers")
        if (s.attributes or {}).get("tgflow.account.id") == account["id"]
    ]
    assert requests
    for request in requests:
        assert not request.status.is_ok
        assert [e.name for e in request.events] == ["exception"]


async def test_clients_keep_no_update_state_so_they_never_fetch_differences(
    api: httpx.AsyncClient, admin: SandboxAdmin, spans: InMemorySpanExporter
) -> None:
    """Connecting asks for no update state, and a send whose result runs ahead of the
    account's known state (someone wrote to it meanwhile) fetches no difference."""
    account, created = await import_account(api, admin)
    other = await admin.create_account(first_name="Other")
    first = await run(api, "telegram.send_message", account_id=account["id"], peer="me", text="1")
    await admin.post_message(other["user_id"], created["user_id"], "meanwhile")
    second = await run(api, "telegram.send_message", account_id=account["id"], peer="me", text="2")
    assert first["status"] == second["status"] == "succeeded"
    await asyncio.sleep(1.0)  # past Telethon's wait before it would fetch a gap
    methods = {(s.attributes or {}).get("rpc.method") for s in spans.get_finished_spans()}
    assert "messages.sendMessage" in methods
    assert {m for m in methods if str(m).startswith("updates.")} == set()
