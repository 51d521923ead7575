"""Peers and params the gateway can judge alone: one spelling per peer, 422 for the rest."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from telethon import types, utils

from services.sandbox.admin_client import SandboxAdmin
from shared.jobs.telegram import normalize_peer
from tests.helpers import auth
from tests.telegram.conftest import import_account
from tests.telegram.test_jobs import run


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("me", "me"),
        ("Self", "me"),
        ("@Carol_sb", "@carol_sb"),
        ("carol_sb", "@carol_sb"),
        ("https://t.me/Carol_sb", "@carol_sb"),
        ("t.me/carol_sb/", "@carol_sb"),
        ("https://t.me/news_sb/12", "@news_sb"),
        ("https://www.t.me/news_sb", "@news_sb"),
        ("https://telegram.dog/news_sb?single", "@news_sb"),
        ("telegram.me/s/news_sb", "@news_sb"),
        # A private link names a channel by its bare id: the peer is its marked id,
        # -(10**12 + id), whatever the id's length.
        ("https://t.me/c/1234567/45", "-1000001234567"),
        ("t.me/c/123/45", "-1000000000123"),
        ("t.me/c/5", "-1000000000005"),
        ("https://t.me/c/1234567890/7", "-1001234567890"),
        ("t.me/c/123456789012345", "-124456789012345"),
        ("t.me/+15550001133", "+15550001133"),
        ("+15550001133", "+15550001133"),
        ("https://t.me/+AbCdEf_123", "https://t.me/+AbCdEf_123"),
        ("t.me/joinchat/AbCdEf_123", "https://t.me/+AbCdEf_123"),
        # Prefixes in any case; a message in a forum topic (/<topic>/<message>).
        ("T.ME/JOINCHAT/AbCdEf_123", "https://t.me/+AbCdEf_123"),
        ("https://t.me/S/news_sb", "@news_sb"),
        ("https://t.me/news_sb/12/345", "@news_sb"),
        ("https://t.me/c/1234567890/12/345", "-1001234567890"),
        ("t.me/C/123/45", "-1000000000123"),
        ("-1001234567", "-1001234567"),
        ("0042", "42"),
    ],
)
def test_every_spelling_of_a_peer_becomes_one(given: str, normal: str) -> None:
    assert normalize_peer(given) == normal


@pytest.mark.parametrize(
    "given",
    [
        "0",
        "-0",
        "9223372036854775808",
        "not a peer!",
        "t.me/",
        "t.me/c/x",
        "t.me/c/0",
        "https://example.com/a",
        "t.me/news_sb/1/2/3",
        "t.me/c/123/1/2/3",
        # Telegram's own routes: no chat is named so.
        "t.me/joinchat/",
        "t.me/joinchat",
        "https://t.me/joinchat/abc",
        "https://t.me/proxy?server=1.2.3.4&port=443&secret=ab",
        "https://t.me/socks?server=1.2.3.4&port=1080",
        "https://t.me/share?url=https://example.com",
        "https://t.me/share/url?url=https://example.com",
        "https://t.me/login/12345",
        "https://t.me/confirmphone?phone=1&hash=2",
        "https://t.me/boost?c=123",
        "https://t.me/Boost/news_sb",
        "t.me/addstickers/Animals",
        "t.me/setlanguage/en-gb",
        "t.me/contact/AbCdEf1234",
    ],
)
def test_what_names_no_peer_is_refused(given: str) -> None:
    with pytest.raises(ValueError, match="peer"):
        normalize_peer(given)


@pytest.mark.parametrize("channel_id", [5, 123, 1234567, 1234567890, 123456789012345])
def test_a_private_link_names_the_channel_telethon_reads_from_its_id(channel_id: int) -> None:
    peer = normalize_peer(f"https://t.me/c/{channel_id}/45")
    assert utils.resolve_id(int(peer)) == (channel_id, types.PeerChannel)
    assert int(peer) == utils.get_peer_id(types.PeerChannel(channel_id))


ACCOUNT = str(uuid.uuid4())


@pytest.mark.parametrize(
    ("job_type", "params", "field"),
    [
        ("telegram.send_message", {"peer": "me", "text": "  \n "}, "params.text"),
        (
            "telegram.send_message",
            {"peer": "me", "text": "x", "reply_to": 2**31},
            "params.reply_to",
        ),
        (
            "telegram.send_message",
            {"peer": "me", "text": "x", "reply_to": 2**64},
            "params.reply_to",
        ),
        ("telegram.send_message", {"peer": "99999999999999999999", "text": "x"}, "params.peer"),
        ("telegram.get_messages", {"peer": "me", "ids": [0]}, "params.ids.0"),
        ("telegram.get_messages", {"peer": "me", "ids": [1, 2**64]}, "params.ids.1"),
        ("telegram.get_history", {"peer": "me", "offset_id": 2**31}, "params.offset_id"),
        ("telegram.mark_read", {"peer": "me", "max_id": 2**40}, "params.max_id"),
        ("telegram.join_chat", {"target": "me"}, "params.target"),
        ("telegram.join_chat", {"target": "+15550001133"}, "params.target"),
        ("telegram.join_chat", {"target": "12345"}, "params.target"),
        ("telegram.join_chat", {"target": "t.me/joinchat/"}, "params.target"),
        ("telegram.get_history", {"peer": "https://t.me/proxy?server=1.2.3.4"}, "params.peer"),
        ("telegram.get_participants", {"peer": "me"}, "params.peer"),
        ("telegram.get_participants", {"peer": "12345"}, "params.peer"),
        ("telegram.get_participants", {"peer": "-12345"}, "params.peer"),  # a basic group
        ("telegram.get_participants", {"peer": "-1001234567"}, "params.peer"),  # basic too
        # -10^12 itself: Telethon reads a channel only below it (basic group 10^12).
        ("telegram.get_participants", {"peer": "-1000000000000"}, "params.peer"),
        ("telegram.get_participants", {"peer": "@news_sb", "offset": 2**31}, "params.offset"),
        # Ids, counts and flags of another JSON type are not taken for one.
        ("telegram.get_messages", {"peer": "me", "ids": [True]}, "params.ids.0"),
        ("telegram.get_messages", {"peer": "me", "ids": ["7"]}, "params.ids.0"),
        ("telegram.get_history", {"peer": "me", "limit": True}, "params.limit"),
        ("telegram.get_history", {"peer": "me", "offset_id": 5.5}, "params.offset_id"),
        ("telegram.get_messages", {"peer": "me", "ids": [1.5]}, "params.ids.0"),
        ("telegram.get_history", {"peer": "me", "limit": 1e3}, "params.limit"),  # whole, too big
        ("telegram.get_dialogs", {"limit": "10"}, "params.limit"),
        ("telegram.send_message", {"peer": "me", "text": "x", "silent": "yes"}, "params.silent"),
        ("telegram.send_message", {"peer": "me", "text": "x", "silent": 1}, "params.silent"),
        ("telegram.send_message", {"peer": "me", "text": "x", "reply_to": "5"}, "params.reply_to"),
        ("telegram.send_message", {"peer": True, "text": "x"}, "params.peer"),
        ("telegram.send_message", {"peer": 0, "text": "x"}, "params.peer"),
        (
            "telegram.forward_messages",
            {"from_peer": "me", "to_peer": "me", "ids": [1], "silent": "false"},
            "params.silent",
        ),
        ("telegram.mark_read", {"peer": "me", "max_id": False}, "params.max_id"),
        ("telegram.get_participants", {"peer": "@news_sb", "page_size": "2"}, "params.page_size"),
    ],
)
async def test_params_that_cannot_work_are_422_before_any_worker(
    api: httpx.AsyncClient, job_type: str, params: dict[str, Any], field: str
) -> None:
    body = {"type": job_type, "params": {"account_id": ACCOUNT, **params}}
    response = await api.post("/v1/jobs", json=body, headers=auth())
    assert response.status_code == 422, response.text
    assert [d["field"] for d in response.json()["error"]["details"]] == [field]


async def test_ids_and_counts_sent_as_whole_floats_are_taken(
    api: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    """JSON has one number type: 2.0 and 1e0 are a count and an id (a float serialised
    by json.dumps, or by a language whose numbers are doubles); a fraction is not (above)."""
    account, _ = await import_account(api, admin)
    for text in ("one", "two", "three"):
        sent = await run(
            api, "telegram.send_message", account_id=account["id"], peer="me", text=text
        )
        assert sent["status"] == "succeeded", sent
    history = await run(
        api, "telegram.get_history", account_id=account["id"], peer="me", limit=2.0, min_id=0.0
    )
    assert history["status"] == "succeeded", history
    assert [m["text"] for m in history["result"]["messages"]] == ["three", "two"]
    first = min(m["id"] for m in history["result"]["messages"])
    got = await run(
        api, "telegram.get_messages", account_id=account["id"], peer="me", ids=[float(first)]
    )
    assert [m["text"] for m in got["result"]["messages"]] == ["two"]


@pytest.mark.parametrize(
    ("text", "parse_mode", "kind"),
    [
        ("\U0001f600" * 2049, None, "message_too_long"),  # 2,049 characters, 4,098 units
        ("**" + "x" * 4097 + "**", "markdown", "message_too_long"),
        ("** **", "markdown", "message_empty"),
        ("<b> </b>", "html", "message_empty"),
        ("<a href>x</a>", "html", "markup_invalid"),  # attributes without values
        ("<pre><code class>x</code></pre>", "html", "markup_invalid"),
        ("<tg-emoji emoji-id>x</tg-emoji>", "html", "markup_invalid"),
        ('<tg-emoji emoji-id="99999999999999999999999">x</tg-emoji>', "html", "markup_invalid"),
        ('<a href="tg://user?id=99999999999999999999999">x</a>', "html", "markup_invalid"),
        ("[x](tg://user?id=99999999999999999999999)", "markdown", "markup_invalid"),
    ],
)
async def test_text_telegram_would_refuse_is_422_with_its_reason(
    api: httpx.AsyncClient, text: str, parse_mode: str | None, kind: str
) -> None:
    params = {"account_id": ACCOUNT, "peer": "me", "text": text, "parse_mode": parse_mode}
    response = await api.post(
        "/v1/jobs", json={"type": "telegram.send_message", "params": params}, headers=auth()
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_params"
    assert [(d["field"], d["type"]) for d in error["details"]] == [("params.text", kind)]


async def test_a_batch_with_one_impossible_job_enqueues_nothing(
    api: httpx.AsyncClient, redis: Redis
) -> None:
    jobs = [
        {"type": "telegram.get_me", "params": {"account_id": ACCOUNT}},
        {
            "type": "telegram.get_messages",
            "params": {"account_id": ACCOUNT, "peer": "me", "ids": [2**64]},
        },
    ]
    response = await api.post("/v1/jobs:batch", json={"jobs": jobs}, headers=auth())
    assert response.status_code == 422, response.text
    assert await redis.keys("tgflow:job:*") == []


@pytest.mark.parametrize(
    ("job_type", "params", "field"),
    [
        ("telegram.get_history", {"peer": "@alice_sb\x00"}, "params.peer"),
        ("telegram.join_chat", {"target": "t.me/+abc\x00def"}, "params.target"),
        ("telegram.get_participants", {"peer": "\x00@news_sb"}, "params.peer"),
        (
            "telegram.forward_messages",
            {"from_peer": "me", "to_peer": "\x00", "ids": [1]},
            "params.to_peer",
        ),
        ("telegram.send_message", {"peer": "me", "text": "a\x00b"}, "params.text"),
    ],
)
async def test_a_nul_in_a_peer_is_refused_as_in_any_field(
    api: httpx.AsyncClient, job_type: str, params: dict[str, Any], field: str
) -> None:
    body = {"type": job_type, "params": {"account_id": ACCOUNT, **params}}
    response = await api.post("/v1/jobs", json=body, headers=auth())
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_character"
    assert [(d["field"], d["type"]) for d in error["details"]] == [(field, "invalid_character")]
