"""Sends exactly once: resends after drops and crashes, refused resends, and cancels
that come once a send has gone out."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from services.sandbox.admin_client import SandboxAdmin
from services.sandbox.server import Sandbox
from services.worker.tasks import telegram as telegram_tasks
from tests.helpers import auth, eventually, gateway_client, running_worker, wait_for_status
from tests.telegram.conftest import import_account
from tests.telegram.test_jobs import run, submit


async def test_send_is_exactly_once_when_the_connection_drops_after_executing(
    api: httpx.AsyncClient, admin: SandboxAdmin, pg: asyncpg.Connection[Any]
) -> None:
    account, created = await import_account(api, admin)
    await admin.add_fault(created["user_id"], "drop_after", method="messages.sendMessage", times=1)
    sent = await run(
        api, "telegram.send_message", account_id=account["id"], peer="me", text="only once"
    )
    assert sent["status"] == "succeeded", sent
    stored = await admin.messages(created["user_id"])
    assert [m["text"] for m in stored] == ["only once"]
    assert stored[0]["id"] == sent["result"]["message_id"]
    row = await eventually(
        lambda: pg.fetchrow(
            "SELECT random_id FROM jobs WHERE id = $1 AND status = 'succeeded'",
            uuid.UUID(sent["id"]),
        )
    )
    assert row["random_id"] == sent["result"]["random_id"]


# The MTProto method each job type under test sends its messages with.
SENDS = {
    "telegram.send_message": "messages.sendMessage",
    "telegram.forward_messages": "messages.forwardMessages",
}


async def refused_resend(
    api: httpx.AsyncClient,
    admin: SandboxAdmin,
    account: dict[str, Any],
    job_type: str = "telegram.send_message",
    **params: Any,
) -> dict[str, Any]:
    """A send (or forward) whose answer is lost once, and whose resend the DC refuses
    as a repeated random_id (as Telegram may, rather than answering with the original)."""
    await admin.set_random_id_duplicate(True)
    user_id = account["tg_user_id"]
    await admin.add_fault(user_id, "drop_after", method=SENDS[job_type], times=1)
    sent = await run(api, job_type, account_id=account["id"], **params)
    assert sent["status"] == "succeeded", sent  # the message exists: delivered once
    assert sent["result"]["resend_refused"] is True
    return sent


async def test_a_refused_resend_reports_the_message_the_first_attempt_sent(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    account, created = await import_account(api, admin)
    friend = await admin.create_account(username="friend_sb")
    await admin.post_message(friend["user_id"], created["user_id"], "only once")  # theirs
    sent = await refused_resend(api, admin, account, peer="@friend_sb", text="only once")
    stored = await admin.messages(created["user_id"], friend["user_id"])
    ours = [m for m in stored if m["out"]]
    assert [(m["id"], m["random_id"]) for m in ours] == [
        (sent["result"]["message_id"], sent["result"]["random_id"])
    ]
    assert len(stored) == 2


async def test_a_refused_resend_names_no_message_it_cannot_tell_apart(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    account, created = await import_account(api, admin)
    await admin.post_message(created["user_id"], created["user_id"], "same words")  # earlier
    sent = await refused_resend(api, admin, account, peer="me", text="same words")
    assert sent["result"]["message_id"] is None  # two candidates: neither is named
    stored = await admin.messages(created["user_id"])
    assert [m["random_id"] for m in stored] == [None, sent["result"]["random_id"]]


async def test_a_forward_whose_resend_is_refused_succeeds_once(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    account, created = await import_account(api, admin)
    original = await admin.post_message(created["user_id"], created["user_id"], "pass it on")
    forwarded = await refused_resend(
        api,
        admin,
        account,
        "telegram.forward_messages",
        from_peer="me",
        to_peer="me",
        ids=[original["id"]],
    )
    assert forwarded["result"]["message_ids"] == []  # a forward's copies are not named
    assert len(await admin.messages(created["user_id"])) == 2  # the original, one copy


async def test_a_refused_resend_whose_message_is_out_of_reach_succeeds_without_sending(
    sandbox: Sandbox, admin: SandboxAdmin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(telegram_tasks, "SENT_SCAN", 2)
    dc = f"127.0.0.1:{sandbox.mtproto_port}"
    async with (
        gateway_client() as api,
        running_worker(worker_poll_delay=0.05, sandbox_dc=dc, telegram_request_timeout=1),
    ):
        account, created = await import_account(api, admin)
        friend = await admin.create_account(username="friend_sb")
        await admin.set_random_id_duplicate(True)
        # The DC stores the message and holds the answer past the request's timeout
        # (a retry comes at once: no 2 s sleep after the server's error either).
        await admin.add_fault(
            created["user_id"], "delay_after", method="messages.sendMessage", seconds=3
        )
        job_id = await submit(
            api,
            "telegram.send_message",
            account_id=account["id"],
            peer="@friend_sb",
            text="lost in the chat",
        )

        async def stored() -> Any:
            return await admin.messages(created["user_id"], friend["user_id"])

        await eventually(stored)
        for text in ("one", "two"):  # newer than ours: the scan of 2 misses it
            await admin.post_message(friend["user_id"], created["user_id"], text)
        job = await wait_for_status(api, job_id, {"succeeded", "failed"}, timeout=20)
    assert job["status"] == "succeeded", job
    assert job["result"]["resend_refused"] is True
    assert job["result"]["message_id"] is None
    texts = [m["text"] for m in await admin.messages(created["user_id"], friend["user_id"])]
    assert sorted(texts) == ["lost in the chat", "one", "two"]


async def sending(
    api: httpx.AsyncClient, admin: SandboxAdmin, job_type: str, hold: float
) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """A send (or forward) to Saved Messages that the DC has carried out but whose answer
    it holds ``hold`` s: (job id, sandbox account, the chat's messages before it)."""
    account, created = await import_account(api, admin)
    user_id = created["user_id"]
    params: dict[str, Any] = {"peer": "me", "text": "gone out"}
    if job_type == "telegram.forward_messages":
        original = await admin.post_message(user_id, user_id, "pass it on")
        params = {"from_peer": "me", "to_peer": "me", "ids": [original["id"]]}
    before = await admin.messages(user_id)
    await admin.add_fault(user_id, "delay_after", method=SENDS[job_type], seconds=hold)
    job_id = await submit(api, job_type, account_id=account["id"], **params)

    async def carried_out() -> bool:
        return len(await admin.messages(user_id)) > len(before)

    await eventually(carried_out)
    return job_id, created, before


@pytest.mark.parametrize("job_type", list(SENDS))
async def test_a_cancel_that_comes_once_the_send_went_out_does_not_cut_it(
    api: httpx.AsyncClient, admin: SandboxAdmin, job_type: str
) -> None:
    """The DC has acted and holds its answer when the job is cancelled: the send is not
    cut, and the job succeeds with what it sent (the cancel stays, as too late)."""
    job_id, created, before = await sending(api, admin, job_type, hold=1)
    response = await api.delete(f"/v1/jobs/{job_id}", headers=auth())
    assert response.status_code == 202
    job = await wait_for_status(api, job_id, {"succeeded", "failed", "cancelled"}, timeout=10)
    assert job["status"] == "succeeded", job
    assert job["cancel_requested"] is True
    sent = [m["id"] for m in await admin.messages(created["user_id"]) if m not in before]
    result = job["result"]
    assert sent == result.get("message_ids", [result.get("message_id")])


async def test_a_cancelled_send_with_no_answer_says_it_may_have_been_delivered(
    sandbox: Sandbox, admin: SandboxAdmin
) -> None:
    """The answer outlives the request's timeout while a cancel waits for it: the job
    ends cancelled, and its error says the message may have been delivered."""
    dc = f"127.0.0.1:{sandbox.mtproto_port}"
    async with (
        gateway_client() as api,
        running_worker(worker_poll_delay=0.05, sandbox_dc=dc, telegram_request_timeout=1),
    ):
        job_id, created, _ = await sending(api, admin, "telegram.send_message", hold=3)
        await api.delete(f"/v1/jobs/{job_id}", headers=auth())
        job = await wait_for_status(api, job_id, {"succeeded", "failed", "cancelled"}, timeout=10)
    stored = await admin.messages(created["user_id"])
    assert job["status"] == "cancelled", job
    assert job["error"]["details"] == {"maybe_sent": True, "random_id": stored[0]["random_id"]}
    assert "may have taken effect" in job["error"]["message"]


async def test_a_cancel_before_the_send_goes_out_stops_it(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    account, created = await import_account(api, admin)
    await admin.create_account(username="friend_sb")
    await admin.add_fault(created["user_id"], "delay", method="contacts.resolveUsername", seconds=1)
    job_id = await submit(
        api, "telegram.send_message", account_id=account["id"], peer="@friend_sb", text="no"
    )
    await wait_for_status(api, job_id, {"running"})
    response = await api.delete(f"/v1/jobs/{job_id}", headers=auth())
    assert response.status_code == 202
    job = await wait_for_status(api, job_id, {"succeeded", "failed", "cancelled"}, timeout=10)
    assert job["status"] == "cancelled"
    assert job["error"]["details"] is None
    assert await admin.messages(created["user_id"]) == []


async def test_a_cancel_while_the_sends_client_connects_stops_it(
    sandbox: Sandbox, admin: SandboxAdmin
) -> None:
    """The send's client is still connecting (nothing has gone out) when the job is
    cancelled: the connect is not the send, and the cancel stops the job at once."""
    dc = f"127.0.0.1:{sandbox.mtproto_port}"
    async with gateway_client() as api:
        async with running_worker(worker_poll_delay=0.05, sandbox_dc=dc):
            account, created = await import_account(api, admin)
        # A new worker's client connects for the send, and the DC holds its connect.
        await admin.add_fault(created["user_id"], "delay", method="help.getConfig", seconds=4)
        async with running_worker(worker_poll_delay=0.05, sandbox_dc=dc):
            job_id = await submit(
                api, "telegram.send_message", account_id=account["id"], peer="me", text="no"
            )
            await wait_for_status(api, job_id, {"running"})
            await asyncio.sleep(0.5)
            response = await api.delete(f"/v1/jobs/{job_id}", headers=auth())
            assert response.status_code == 202
            job = await wait_for_status(
                api, job_id, {"succeeded", "failed", "cancelled"}, timeout=2
            )
    assert job["status"] == "cancelled", job
    assert job["error"]["details"] is None
    assert await admin.messages(created["user_id"]) == []


async def test_a_cancel_during_a_short_flood_wait_on_the_send_stops_it(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    """A flood wait short enough for the client to sleep through elsewhere defers a send
    instead (nothing has gone out), so a cancel meanwhile stops it."""
    account, created = await import_account(api, admin)
    method = "messages.sendMessage"
    await admin.add_fault(created["user_id"], "flood_wait", method=method, seconds=3, times=1)
    job_id = await submit(
        api, "telegram.send_message", account_id=account["id"], peer="me", text="no"
    )

    async def met_the_flood() -> bool:
        job = (await api.get(f"/v1/jobs/{job_id}", headers=auth())).json()
        return job["status"] == "running" or bool(job["error"])

    await eventually(met_the_flood)
    await asyncio.sleep(0.5)
    assert await admin.messages(created["user_id"]) == []
    response = await api.delete(f"/v1/jobs/{job_id}", headers=auth())
    assert response.status_code in (200, 202)  # deferred: cancelled at once
    job = await wait_for_status(api, job_id, {"succeeded", "failed", "cancelled"}, timeout=10)
    assert job["status"] == "cancelled", job
    await asyncio.sleep(3)  # past the wait: nothing goes out after the cancel either
    assert await admin.messages(created["user_id"]) == []


async def test_a_send_under_way_at_shutdown_finishes_before_the_worker_stops(
    sandbox: Sandbox, admin: SandboxAdmin
) -> None:
    """No grace for running jobs: the drain cancels the send while the DC holds its
    answer, and the job still ends succeeded with the message, not handed back."""
    dc = f"127.0.0.1:{sandbox.mtproto_port}"
    async with gateway_client() as api:
        async with running_worker(worker_poll_delay=0.05, sandbox_dc=dc, worker_drain_seconds=0):
            job_id, created, _ = await sending(api, admin, "telegram.send_message", hold=1)
        job = (await api.get(f"/v1/jobs/{job_id}", headers=auth())).json()
    stored = await admin.messages(created["user_id"])
    assert job["status"] == "succeeded", job
    assert [m["id"] for m in stored] == [job["result"]["message_id"]]
