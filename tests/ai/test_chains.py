"""ai.summarize_chat and ai.reply end to end: real Telegram history from the sandbox DC,
read by the account's worker through telegram.get_history, then the sandbox model."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from services.sandbox.admin_client import SandboxAdmin
from services.sandbox.server import Sandbox
from services.sandbox.textmodel import sentences
from services.worker.ai import chains
from services.worker.ai.chains import child_id
from tests.ai.conftest import Configure
from tests.helpers import auth, gateway_client, running_worker, wait_for_status

CHAT = [
    "The ferry to the island is cancelled today because of the storm.",
    "Is the ferry running tomorrow morning?",
    "The harbour office says the ferry runs again tomorrow at nine.",
    "Great, then the island trip moves to tomorrow.",
    "Bring warm coats, the island is cold after the storm.",
]


@contextlib.asynccontextmanager
async def stack(sandbox: Sandbox) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway and one worker for every queue, Telegram on the sandbox DC."""
    dc = f"127.0.0.1:{sandbox.mtproto_port}"
    async with gateway_client() as client, running_worker(worker_poll_delay=0.05, sandbox_dc=dc):
        yield client


async def _chat(api: httpx.AsyncClient, model: SandboxAdmin) -> tuple[str, dict[str, Any]]:
    """An imported account in a supergroup where a friend and it talked; its tgflow id."""
    me = await model.create_account(username="reader_sb", first_name="Reader")
    friend = await model.create_account(username="friend_sb", first_name="Friend")
    seeded = [
        {"text": text, "from_id": (friend if i % 2 == 0 else me)["user_id"]}
        for i, text in enumerate(CHAT)
    ]
    await model.create_chat(
        title="Island trip",
        username="island_trip",
        creator_id=friend["user_id"],
        members=[me["user_id"]],
        messages=seeded,
    )
    response = await api.post(
        "/v1/accounts/import", json={"session_string": me["session_string"]}, headers=auth()
    )
    assert response.status_code == 201, response.text
    account_id: str = response.json()["id"]
    return account_id, me


def _deferrals(job_type: str) -> float:
    labels = {"type": job_type, "code": "waiting_for_step"}
    return REGISTRY.get_sample_value("tgflow_jobs_deferred_total", labels) or 0.0


def _quoted(summary: str) -> list[str]:
    """The messages a summary quotes: its transcript lines are "[date] sender: text"."""
    return [line.split(": ", 1)[1] for line in sentences(summary)]


async def _run(api: httpx.AsyncClient, job_type: str, **params: Any) -> dict[str, Any]:
    response = await api.post("/v1/jobs", json={"type": job_type, "params": params}, headers=auth())
    assert response.status_code == 202, response.text
    return await wait_for_status(api, response.json()["id"], {"succeeded", "failed"}, timeout=30)


async def test_summarize_a_chat_through_child_jobs(
    providers: Configure, sandbox: Sandbox, model: SandboxAdmin, redis: Any
) -> None:
    async with stack(sandbox) as api:
        account_id, _ = await _chat(api, model)
        job = await _run(api, "ai.summarize_chat", account_id=account_id, peer="@island_trip")
        history = await api.get(f"/v1/jobs/{child_id(job['id'], 'history-0')}", headers=auth())
        summary = await api.get(f"/v1/jobs/{child_id(job['id'], 'summary')}", headers=auth())
        again = await _run(api, "ai.summarize_chat", account_id=account_id, peer="@island_trip")
        progress = json.loads(await redis.hget(f"tgflow:job:{job['id']}", "progress"))
    assert job["status"] == "succeeded", job
    result = job["result"]
    picked = _quoted(result["summary"])
    assert picked
    assert set(picked) <= set(CHAT)  # the extractive model quotes the real messages
    assert result["messages"] == len(CHAT)
    assert result["last_message_id"] > result["first_message_id"]
    assert [(s["name"], s["type"], s["status"]) for s in result["steps"]] == [
        ("history-0", "telegram.get_history", "succeeded"),
        ("summary", "ai.complete", "succeeded"),
    ]
    assert progress["steps"] == result["steps"]  # the parent's record shows both steps
    assert history.json()["type"] == "telegram.get_history"
    assert history.json()["result"]["messages"][0]["text"] == CHAT[-1]  # newest first
    assert summary.json()["result"]["text"] == result["summary"]
    assert summary.json()["params"]["messages"][1]["content"].count("\n") == len(CHAT) - 1
    assert result["usage"]["total_tokens"] > 0
    assert result["cached"] is False
    assert again["result"]["cached"] is True  # the same conversation: the model is not asked
    assert again["result"]["summary"] == result["summary"]


async def test_since_and_limit_choose_the_messages(
    providers: Configure, sandbox: Sandbox, model: SandboxAdmin
) -> None:
    async with stack(sandbox) as api:
        account_id, _ = await _chat(api, model)
        newest = await _run(
            api, "ai.summarize_chat", account_id=account_id, peer="@island_trip", limit=2
        )
        future = await _run(
            api,
            "ai.summarize_chat",
            account_id=account_id,
            peer="@island_trip",
            since="2999-01-01T00:00:00Z",
        )
    assert newest["result"]["messages"] == 2
    assert set(_quoted(newest["result"]["summary"])) <= set(CHAT[-2:])
    assert future["status"] == "failed"
    assert future["error"]["code"] == "no_messages"


async def test_a_message_of_several_lines_counts_once(
    providers: Configure, sandbox: Sandbox, model: SandboxAdmin
) -> None:
    async with stack(sandbox) as api:
        me = await model.create_account(username="lines_sb", first_name="Lines")
        await model.create_chat(
            title="Lines",
            username="lines_chat",
            creator_id=me["user_id"],
            messages=[{"text": "first\nsecond\nthird"}, {"text": "then one line"}],
        )
        response = await api.post(
            "/v1/accounts/import", json={"session_string": me["session_string"]}, headers=auth()
        )
        account_id = response.json()["id"]
        job = await _run(api, "ai.summarize_chat", account_id=account_id, peer="@lines_chat")
        history = await _run(
            api, "telegram.get_history", account_id=account_id, peer="@lines_chat", limit=10
        )
    assert job["status"] == "succeeded", job
    messages = history["result"]["messages"]  # newest first, the creation last
    ids = [m["id"] for m in messages if m["action"] is None]
    assert messages[-1]["action"] == "channel_create"  # shown in history, not summarised
    assert job["result"]["messages"] == 2
    assert (job["result"]["first_message_id"], job["result"]["last_message_id"]) == (
        ids[-1],
        ids[0],
    )


@pytest.mark.parametrize("wait", [None, 0.0], ids=["waiting", "deferring"])
async def test_reply_is_written_and_sent_once(
    providers: Configure,
    sandbox: Sandbox,
    model: SandboxAdmin,
    monkeypatch: pytest.MonkeyPatch,
    wait: float | None,
) -> None:
    if wait is not None:  # never wait in the worker: the parent re-runs for every step
        monkeypatch.setattr(chains, "WAIT_SECONDS", wait)
    deferred = _deferrals("ai.reply")
    async with stack(sandbox) as api:
        account_id, me = await _chat(api, model)
        history = await _run(
            api, "telegram.get_history", account_id=account_id, peer="@island_trip", limit=5
        )
        question = next(
            m for m in history["result"]["messages"] if m["text"].startswith("Is the ferry")
        )
        job = await _run(
            api,
            "ai.reply",
            account_id=account_id,
            peer="@island_trip",
            message_id=question["id"],
            send=True,
            instructions="Be friendly.",
        )
        stored = await model.messages(me["user_id"], "@island_trip")
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["sent"] is True
    assert result["text"]
    assert [s["name"] for s in result["steps"]] == ["history", "reply", "send"]
    assert job["attempts"] == 1  # waiting for steps spent no tries
    if wait is not None:
        assert _deferrals("ai.reply") - deferred >= 3  # one run per step, at least
    replies = [m for m in stored if m["text"] == result["text"]]
    assert len(replies) == 1  # sent once, however many runs passed the send step
    assert replies[0]["id"] == result["sent_message_id"]
    assert replies[0]["from_id"] == me["user_id"]


async def test_a_failed_step_fails_the_parent(
    providers: Configure, sandbox: Sandbox, model: SandboxAdmin
) -> None:
    async with stack(sandbox) as api:
        account_id, _ = await _chat(api, model)
        job = await _run(api, "ai.summarize_chat", account_id=account_id, peer="@nobody_here")
        missing = await _run(
            api, "ai.reply", account_id=account_id, peer="@island_trip", message_id=99_999
        )
    assert job["status"] == "failed"
    assert job["error"]["code"] == "step_failed"
    assert "username_not_occupied" in job["error"]["message"]
    assert missing["error"]["code"] == "message_not_found"


@pytest.mark.parametrize("job_type", ["ai.summarize_chat", "ai.reply"])
async def test_chains_check_the_model_at_the_gateway(providers: Configure, job_type: str) -> None:
    params = {"account_id": str(uuid.uuid4()), "peer": "@island_trip", "model": "gpt-17"}
    if job_type == "ai.reply":
        params["message_id"] = 1
    async with gateway_client() as api:
        response = await api.post(
            "/v1/jobs", json={"type": job_type, "params": params}, headers=auth()
        )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "unknown_model"


async def test_a_reply_to_a_message_id_whose_history_cannot_be_read_is_422() -> None:
    """Its history is read from message_id + 1 down, which must be an MTProto int too."""
    params = {"account_id": str(uuid.uuid4()), "peer": "@island_trip", "message_id": 2**31 - 1}
    async with gateway_client() as api:
        response = await api.post(
            "/v1/jobs", json={"type": "ai.reply", "params": params}, headers=auth()
        )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["field"] == "params.message_id"


def test_child_ids_are_stable_per_parent_and_step() -> None:
    parent = str(uuid.uuid4())
    assert child_id(parent, "summary") == child_id(parent, "summary")
    assert child_id(parent, "summary") != child_id(parent, "history-0")
    assert child_id(parent, "summary") != child_id(str(uuid.uuid4()), "summary")
    uuid.UUID(child_id(parent, "summary"))  # a valid job id
