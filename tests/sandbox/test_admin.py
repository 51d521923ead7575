"""The admin API contract, its validation, and the command-line entry point."""

import asyncio
import os
import signal
import sys

import httpx
import pytest
from telethon import errors

from services.sandbox.admin_client import SandboxAdmin, SandboxAdminError
from services.sandbox.client import auth_key_id
from services.sandbox.server import Sandbox

from .conftest import AccountFactory, ClientFactory


async def test_server_info(admin: httpx.AsyncClient, sandbox: Sandbox) -> None:
    info = (await admin.get("/admin/server")).json()
    assert info["dc_id"] == 2
    assert info["login_code"] == "22222"
    assert (info["host"], info["port"]) == ("127.0.0.1", sandbox.mtproto_port)
    assert info["rsa_public_key_pem"].startswith("-----BEGIN RSA PUBLIC KEY-----")


async def test_accounts_are_distinct_and_listed(
    admin: httpx.AsyncClient, new_account: AccountFactory
) -> None:
    first = await new_account(username="first_acct", first_name="First")
    second = await new_account()
    assert first["user_id"] != second["user_id"]
    assert first["phone"] != second["phone"]
    assert first["auth_key_id"] == auth_key_id(first["session_string"])
    listed = (await admin.get("/admin/accounts")).json()["accounts"]
    assert [a["user_id"] for a in listed] == [first["user_id"], second["user_id"]]
    assert all(a["session_string"] is None for a in listed)  # never shown again


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/admin/accounts", {"username": "x"}, 422),
        ("POST", "/admin/accounts", {"phone": "not a phone"}, 422),
        ("POST", "/admin/accounts", {"unexpected": 1}, 422),
        ("POST", "/admin/faults", {"user_id": 1, "kind": "flood_wait"}, 404),
        ("POST", "/admin/faults", {"user_id": 1, "kind": "explode"}, 422),
        ("POST", "/admin/faults", {"user_id": 1, "kind": "delay", "method": "no.such"}, 422),
        ("POST", "/admin/faults", {"user_id": 1, "kind": "delay", "seconds": -1}, 422),
        ("POST", "/admin/faults", {"user_id": 1, "kind": "error"}, 422),
        ("POST", "/admin/faults", {"user_id": 1, "kind": "error", "error": "lower"}, 422),
        ("POST", "/admin/faults", {"user_id": 1, "kind": "delay", "error": "X"}, 422),
        ("DELETE", "/admin/faults/99", None, 404),
        ("DELETE", "/admin/faults/abc", None, 422),
        ("GET", "/admin/messages", None, 422),
        ("GET", "/admin/messages?user_id=abc", None, 422),
        ("GET", "/admin/messages?user_id=5", None, 404),
        ("POST", "/admin/chats", {"title": "t", "creator_id": 5}, 404),
        ("POST", "/admin/chats", {"title": "", "creator_id": 5}, 422),
        ("POST", "/admin/config", {"auth_key_duplicated": "maybe"}, 422),
        ("POST", "/admin/config", {"participants_listed": -1}, 422),
        ("POST", "/admin/ai/faults", {"kind": "meteor"}, 422),
        ("POST", "/admin/ai/config", {"latency_ms": -5}, 422),
        ("GET", "/admin/nowhere", None, 404),
        ("PUT", "/admin/accounts", {}, 405),
    ],
)
async def test_bad_admin_input_is_a_json_4xx(
    admin: httpx.AsyncClient, method: str, path: str, body: object, status: int
) -> None:
    response = await admin.request(method, path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"]
    assert error["message"]


async def test_malformed_json_is_a_4xx(admin: httpx.AsyncClient) -> None:
    response = await admin.post("/admin/accounts", content=b"{oops")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


async def test_duplicate_usernames_and_peers(
    admin: httpx.AsyncClient, new_account: AccountFactory
) -> None:
    owner = await new_account(username="taken_name")
    clash = await admin.post("/admin/accounts", json={"username": "Taken_Name"})
    assert clash.status_code == 409
    chat = await admin.post(
        "/admin/chats",
        json={"title": "c", "creator_id": owner["user_id"], "username": "taken_name"},
    )
    assert chat.status_code == 409
    unknown_peer = await admin.get(
        "/admin/messages", params={"user_id": owner["user_id"], "peer": "@ghost"}
    )
    assert unknown_peer.status_code == 404


async def test_messages_filtered_by_peer_with_random_ids(
    admin: httpx.AsyncClient, new_account: AccountFactory, new_client: ClientFactory
) -> None:
    alice = await new_account()
    bob = await new_account(username="bob_filter")
    carol = await new_account(username="carol_filter")
    client = new_client(alice["session_string"])
    await client.connect()
    await client.send_message("bob_filter", "to bob")
    await client.send_message("carol_filter", "to carol")
    params = {"user_id": alice["user_id"], "peer": "@bob_filter"}
    only_bob = (await admin.get("/admin/messages", params=params)).json()["messages"]
    assert [(m["text"], m["peer"]) for m in only_bob] == [("to bob", bob["user_id"])]
    assert isinstance(only_bob[0]["random_id"], int)
    assert only_bob[0]["date"] > 0
    every = (await admin.get("/admin/messages", params={"user_id": alice["user_id"]})).json()
    assert {m["peer"] for m in every["messages"]} == {bob["user_id"], carol["user_id"]}


async def test_reset_forgets_everything(
    admin: httpx.AsyncClient, sandbox: Sandbox, new_account: AccountFactory
) -> None:
    await new_account()
    assert (await admin.post("/admin/reset")).json() == {"reset": True}
    assert (await admin.get("/admin/accounts")).json()["accounts"] == []
    assert len(sandbox.core.keys) == 0


async def test_cli_serves_until_sigterm() -> None:
    code = "from services.sandbox.cli import main; raise SystemExit(main())"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        "--port",
        "0",
        "--admin-port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        cwd=os.getcwd(),
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(20):
            mtproto = (await process.stdout.readline()).decode().split()
            admin_line = (await process.stdout.readline()).decode().split()
        assert mtproto[:2] == ["sandbox", "mtproto"]
        assert admin_line[:2] == ["sandbox", "admin"]
        async with httpx.AsyncClient(base_url=admin_line[2]) as http:
            info = (await http.get("/admin/server")).json()
        assert f"{info['host']}:{info['port']}" == mtproto[2]
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_admin_client_round_trip(sandbox: Sandbox, new_client: ClientFactory) -> None:
    async with SandboxAdmin(sandbox.admin_url) as api:
        assert (await api.server())["port"] == sandbox.mtproto_port
        alice = await api.create_account(username="alice_api")
        fault = await api.add_fault(
            alice["user_id"], "flood_wait", method="messages.sendMessage", seconds=5, times=1
        )
        client = new_client(alice["session_string"])
        await client.connect()
        with pytest.raises(errors.FloodWaitError):
            await client.send_message("me", "x")
        await api.delete_fault(fault)
        with pytest.raises(SandboxAdminError) as caught:
            await api.delete_fault(fault)
        assert caught.value.status == 404
        await api.post_message(alice["user_id"], "@alice_api", "note to self")
        assert [m["text"] for m in await api.messages(alice["user_id"])] == ["note to self"]
        assert len(await api.ledger()) == 1
        assert await api.overlaps() == []
        assert api.openai_base_url == f"{sandbox.admin_url}/v1"
