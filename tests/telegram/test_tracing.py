"""A span per MTProto request: named by the method, under the job's span, with the
account id and never the session; and the request metrics, counted as Telegram received
the requests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from services.sandbox.admin_client import SandboxAdmin
from services.sandbox.server import Sandbox
from services.worker.telegram.client import mtproto_name
from shared.errors import PermanentFailure, RetryableFailure
from shared.telemetry import Provider
from tests.helpers import auth
from tests.telegram.conftest import close_runtime, import_account, open_runtime, requests_counted
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


async def test_login_requests_name_the_account_they_log_in(
    api: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    """The login's own client (not the pool's) traces its requests under the account."""
    started = await api.post("/v1/accounts", json={"phone": "+15550007777"}, headers=auth())
    account_id = started.json()["account_id"]
    done = await api.post(
        f"/v1/accounts/{account_id}/login/code", json={"code": "22222"}, headers=auth()
    )
    assert done.status_code == 200, done.text
    found = spans.get_finished_spans()
    for method in ("auth.sendCode", "auth.signIn"):
        (request,) = _named(found, f"telegram {method}")
        assert (request.attributes or {})["tgflow.account.id"] == account_id


async def test_an_import_job_span_names_the_account_it_stored(
    api: httpx.AsyncClient, admin: SandboxAdmin, spans: InMemorySpanExporter
) -> None:
    account, _ = await import_account(api, admin)
    (job,) = [s for s in spans.get_finished_spans() if s.name == "job account.import"]
    assert (job.attributes or {})["tgflow.account.id"] == account["id"]


async def test_requests_are_counted_as_telegram_received_them(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    """Three sends to one username: Telegram resolves it once (Telethon keeps the
    answer), so one resolveUsername is counted, not one per send."""
    account, _ = await import_account(api, admin)
    await admin.create_account(username="carol_sb", first_name="Carol")
    for i in range(3):
        sent = await run(
            api, "telegram.send_message", account_id=account["id"], peer="@carol_sb", text=f"{i}"
        )
        assert sent["status"] == "succeeded"
    assert requests_counted(account["id"], "ok", "contacts.resolveUsername") == 1
    assert requests_counted(account["id"], "ok", "messages.sendMessage") == 3


async def test_a_flood_wait_slept_through_in_the_client_is_counted(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    """A wait short enough for Telethon to sleep through (TGFLOW_TELEGRAM_FLOOD_SLEEP_
    THRESHOLD) is a flood wait Telegram imposed all the same: counted with its seconds,
    and the request it answered is a request like the one that went through after it."""
    account, created = await import_account(api, admin)
    method = "messages.getHistory"  # not a send: those are never slept through
    await admin.add_fault(created["user_id"], "flood_wait", method=method, seconds=2, times=1)
    read = await run(api, "telegram.get_history", account_id=account["id"], peer="me")
    assert read["status"] == "succeeded"
    labels = {"account": account["id"], "method": method}
    assert REGISTRY.get_sample_value("tgflow_telegram_flood_waits_total", labels) == 1
    assert REGISTRY.get_sample_value("tgflow_telegram_flood_wait_seconds_total", labels) == 2
    errors = {**labels, "code": "flood_wait"}
    assert REGISTRY.get_sample_value("tgflow_telegram_errors_total", errors) == 1
    assert requests_counted(account["id"], "error", method) == 1
    assert requests_counted(account["id"], "ok", method) == 1
    # Each its own round trip: the 2 s slept between them are no request's time.
    spent = REGISTRY.get_sample_value("tgflow_telegram_request_seconds_total", labels)
    assert spent is not None
    assert spent < 1.5


async def test_the_connects_own_request_is_a_span_under_the_job_that_connects(
    api: httpx.AsyncClient, admin: SandboxAdmin, spans: InMemorySpanExporter
) -> None:
    """Telethon sends the connect's help.getConfig (inside initConnection) past the
    path every other request takes: it has its span all the same."""
    account, _ = await import_account(api, admin)
    me = await run(api, "telegram.get_me", account_id=account["id"])  # the first: it connects
    assert me["status"] == "succeeded"
    found = spans.get_finished_spans()
    (job,) = [s for s in found if s.name == "job telegram.get_me"]
    (request,) = [
        s
        for s in _named(found, "telegram help.getConfig")
        if s.context.trace_id == job.context.trace_id
    ]
    assert request.parent is not None
    assert request.parent.span_id == job.context.span_id
    assert dict(request.attributes or {}) == {
        "rpc.system": "mtproto",
        "rpc.method": "help.getConfig",
        "tgflow.account.id": account["id"],
    }
    assert request.status.is_ok
    assert request.end_time is not None
    assert requests_counted(account["id"], "ok", "help.getConfig") == 1  # counted like any


async def test_a_connect_telegram_refuses_counts_its_request_and_error(
    api: httpx.AsyncClient, admin: SandboxAdmin, sandbox: Sandbox
) -> None:
    """The connect's own help.getConfig, refused by Telegram, is a request that failed
    and an error by its code, in the account's metrics like any other request's."""
    account, created = await import_account(api, admin)
    account_id = uuid.UUID(account["id"])
    rt = await open_runtime(sandbox, "connect-refused")
    try:
        await admin.add_fault(
            created["user_id"],
            "error",
            method="help.getConfig",
            error="CONNECTION_LAYER_INVALID",
            times=1,
        )
        with pytest.raises((PermanentFailure, RetryableFailure)) as failed:
            async with rt.session("acme", account_id) as tg:
                await tg.call("users.getUsers", tg.client.get_me)
        assert requests_counted(account_id, "error", "help.getConfig") == 1
        labels = {"account": account["id"], "method": "help.getConfig", "code": failed.value.code}
        assert REGISTRY.get_sample_value("tgflow_telegram_errors_total", labels) == 1
        async with rt.session("acme", account_id) as tg:
            await tg.call("users.getUsers", tg.client.get_me)
        assert requests_counted(account_id, "ok", "help.getConfig") == 1
        latency = {"account": account["id"], "method": "help.getConfig"}
        assert REGISTRY.get_sample_value("tgflow_telegram_request_seconds_total", latency)
    finally:
        await close_runtime(rt)
