"""The admin HTTP API: accounts, chats, faults, messages, ledger (and /v1 model)."""

import asyncio
import logging
import secrets
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import messaging, srp
from .admin_schemas import (
    AccountIn,
    AdminError,
    AiConfigIn,
    AiFaultIn,
    ChatIn,
    ConfigIn,
    FaultIn,
    FolderIn,
    MessageIn,
    PinIn,
    error_response,
    int_param,
    parse_body,
)
from .client import session_string
from .core import Core
from .errors import RpcFail
from .methods.auth import normalize_phone
from .model import ModelEndpoint, model_routes
from .state import Account, PeerRef, StoredMessage, World

log = logging.getLogger(__name__)


def _rpc_to_admin(fail: RpcFail) -> AdminError:
    status = 409 if fail.message.endswith("_OCCUPIED") else 422
    return AdminError(status, fail.message.lower(), fail.message)


def _account(world: World, user_id: int | None) -> Account:
    account = world.accounts.get(user_id or 0)
    if account is None:
        raise AdminError(404, "not_found", f"no account {user_id}")
    return account


def parse_peer(world: World, raw: str) -> PeerRef:
    """A peer given as a marked id (channels -100...) or as @username."""
    text = raw.strip()
    if text.lstrip("-").isdigit():
        try:
            peer = PeerRef.parse_marked(int(text))
        except ValueError as exc:
            raise AdminError(422, "invalid_request", str(exc)) from None
    else:
        found = world.by_username.get(text.lstrip("@").lower())
        if found is None:
            raise AdminError(404, "not_found", f"no peer {text}")
        peer = found
    table: dict[int, Any] = world.accounts if peer.kind == "user" else world.channels
    if peer.id not in table:
        raise AdminError(404, "not_found", f"no peer {text}")
    return peer


def message_json(viewer: Account, message: StoredMessage) -> dict[str, Any]:
    return {
        "id": message.id,
        "peer": message.peer.marked,
        "from_id": message.from_id,
        "out": message.out or (message.peer.kind == "channel" and message.from_id == viewer.id),
        "random_id": message.random_id,
        "text": message.text,
        "date": message.date,
        "service": message.action is not None,
        "fwd_from": None
        if message.fwd is None or message.fwd.from_peer is None
        else message.fwd.from_peer.marked,
    }


class AdminApi:
    """Route handlers bound to one sandbox."""

    def __init__(self, core: Core, endpoint: ModelEndpoint) -> None:
        self.core = core
        self.endpoint = endpoint
        self._phone_seq = 0

    @property
    def world(self) -> World:
        return self.core.world

    async def server(self, _request: Request) -> Response:
        s = self.core.settings
        return JSONResponse(
            {
                "dc_id": s.dc_id,
                "host": s.public_host,
                "port": s.port,
                "rsa_public_key_pem": self.core.rsa_key.public_pem,
                "login_code": self.core.login_code,
            }
        )

    def _free_phone(self) -> str:
        while True:
            self._phone_seq += 1
            phone = f"99966{self.core.settings.dc_id}{self._phone_seq:04d}"
            if phone not in self.world.by_phone:
                return phone

    async def create_account(self, request: Request) -> Response:
        body = await parse_body(request, AccountIn)
        try:
            phone = normalize_phone(body.phone) if body.phone else self._free_phone()
            account = self.world.create_account(
                phone, body.username, body.first_name, body.last_name
            )
        except RpcFail as fail:
            raise _rpc_to_admin(fail) from None
        if body.password:
            account.password = await asyncio.to_thread(srp.make_password, body.password, body.hint)
        result = self._account_json(account)
        if body.authorized:
            key = self.core.keys.create(account.id)
            s = self.core.settings
            result["session_string"] = session_string(
                s.dc_id, s.public_host, s.port, key.auth_key.key
            )
            result["auth_key_id"] = key.key_id_hex
        return JSONResponse(result, status_code=201)

    def _account_json(self, account: Account) -> dict[str, Any]:
        return {
            "user_id": account.id,
            "access_hash": account.access_hash,
            "phone": account.phone,
            "username": account.username,
            "first_name": account.first_name,
            "banned": account.banned,
            "has_password": account.password is not None,
            "session_string": None,
            "auth_key_id": None,
        }

    async def list_accounts(self, _request: Request) -> Response:
        accounts = [self._account_json(a) for a in self.world.accounts.values()]
        return JSONResponse({"accounts": accounts})

    async def create_chat(self, request: Request) -> Response:
        body = await parse_body(request, ChatIn)
        creator = _account(self.world, body.creator_id)
        members = [_account(self.world, m) for m in body.members]
        invite = body.invite_hash or secrets.token_urlsafe(12)
        try:
            channel = self.world.create_channel(
                creator,
                body.title,
                megagroup=body.kind == "supergroup",
                username=body.username,
                invite_hash=invite,
            )
            for member in members:
                self.world.join(member, channel)
            for seed in body.messages:
                sender = _account(self.world, seed.from_id or creator.id)
                messaging.send(self.world, sender, channel.peer, messaging.Draft(seed.text), None)
        except RpcFail as fail:
            raise _rpc_to_admin(fail) from None
        result = {
            "chat_id": channel.id,
            "peer": channel.peer.marked,
            "access_hash": channel.access_hash,
            "kind": body.kind,
            "username": channel.username,
            "invite_hash": invite,
            "invite_link": f"https://t.me/+{invite}",
            "members": sorted(channel.members),
        }
        return JSONResponse(result, status_code=201)

    async def post_message(self, request: Request) -> Response:
        body = await parse_body(request, MessageIn)
        sender = _account(self.world, body.from_id)
        peer = parse_peer(self.world, body.peer)
        try:
            sent = messaging.send(
                self.world, sender, peer, messaging.Draft(body.text), body.random_id
            )
        except RpcFail as fail:
            raise _rpc_to_admin(fail) from None
        data = message_json(sender, sent.message)
        data.update(pts=sent.pts, duplicate=sent.duplicate)
        return JSONResponse(data, status_code=201)

    async def list_messages(self, request: Request) -> Response:
        account = _account(self.world, int_param(request.query_params, "user_id"))
        raw_peer = request.query_params.get("peer")
        peers: list[PeerRef]
        if raw_peer:
            peers = [parse_peer(self.world, raw_peer)]
        else:
            peers = [*account.by_peer, *(PeerRef("channel", c) for c in account.channels)]
        found: list[dict[str, Any]] = []
        for peer in peers:
            if peer.kind == "channel":
                channel = self.world.channels[peer.id]
                found.extend(message_json(account, m) for m in channel.messages.values())
            else:
                found.extend(
                    message_json(account, account.box[i]) for i in account.by_peer.get(peer, [])
                )
        return JSONResponse({"messages": found})

    async def file_dialog(self, request: Request) -> Response:
        """Archive a dialog of the account (folder 1) or bring it back (0)."""
        body = await parse_body(request, FolderIn)
        account = _account(self.world, body.user_id)
        peer = parse_peer(self.world, body.peer)
        try:
            account.file_dialogs([(peer, body.folder_id)])
        except RpcFail as fail:
            raise _rpc_to_admin(fail) from None
        return JSONResponse(
            {"user_id": account.id, "peer": peer.marked, "folder_id": body.folder_id}
        )

    async def pin_dialog(self, request: Request) -> Response:
        """Pin a dialog of the account on top of its folder's pinned ones, or unpin it."""
        body = await parse_body(request, PinIn)
        account = _account(self.world, body.user_id)
        peer = parse_peer(self.world, body.peer)
        try:
            account.pin_dialog(peer, body.pinned)
        except RpcFail as fail:
            raise _rpc_to_admin(fail) from None
        folder = account.folder_of(peer)
        return JSONResponse(
            {
                "user_id": account.id,
                "peer": peer.marked,
                "pinned": body.pinned,
                "folder_id": folder,
                "pinned_in_folder": [p.marked for p in account.pinned_in(folder)],
            }
        )

    async def add_fault(self, request: Request) -> Response:
        body = await parse_body(request, FaultIn)
        account = _account(self.world, body.user_id)
        fault = self.core.faults.add(
            body.user_id, body.kind, body.method, body.seconds, body.times, body.error
        )
        if body.kind == "revoke":
            self.core.revoke_user_keys(account.id)
        elif body.kind == "ban":
            account.banned = True
        return JSONResponse(fault.as_dict(), status_code=201)

    async def list_faults(self, _request: Request) -> Response:
        return JSONResponse({"faults": [f.as_dict() for f in self.core.faults.all()]})

    async def delete_fault(self, request: Request) -> Response:
        fault = self.core.faults.remove(int_param(request.path_params, "fault_id") or 0)
        if fault is None:
            raise AdminError(404, "not_found", "no such fault")
        if fault.kind == "ban" and fault.user_id in self.world.accounts:
            self.world.accounts[fault.user_id].banned = False
        return JSONResponse({"deleted": fault.id})

    async def ledger(self, _request: Request) -> Response:
        records = [r.as_dict() for r in self.core.ledger.records()]
        return JSONResponse({"connections": records})

    async def overlaps(self, _request: Request) -> Response:
        found = [o.as_dict() for o in self.core.ledger.overlaps()]
        return JSONResponse({"overlaps": found})

    async def config(self, request: Request) -> Response:
        if request.method == "POST":
            body = await parse_body(request, ConfigIn)
            if body.auth_key_duplicated is not None:
                self.core.settings.auth_key_duplicated = body.auth_key_duplicated
            if body.random_id_duplicate is not None:
                self.core.settings.random_id_duplicate = body.random_id_duplicate
            if body.participants_listed is not None:
                self.core.settings.participants_listed = body.participants_listed
            if body.sign_up_unknown is not None:
                self.core.settings.sign_up_unknown = body.sign_up_unknown
        settings = self.core.settings
        return JSONResponse(
            {
                "auth_key_duplicated": settings.auth_key_duplicated,
                "random_id_duplicate": settings.random_id_duplicate,
                "participants_listed": settings.participants_listed,
                "sign_up_unknown": settings.sign_up_unknown,
            }
        )

    async def reset(self, _request: Request) -> Response:
        self.core.reset()
        self.endpoint.reset()
        return JSONResponse({"reset": True})

    async def ai_fault(self, request: Request) -> Response:
        body = await parse_body(request, AiFaultIn)
        fault = self.endpoint.add_fault(
            body.kind, times=body.times, retry_after=body.retry_after, seconds=body.seconds
        )
        return JSONResponse({"id": fault.id, "kind": fault.kind}, status_code=201)

    async def ai_fault_delete(self, request: Request) -> Response:
        fault_id = int_param(request.path_params, "fault_id") or 0
        if self.endpoint.faults.pop(fault_id, None) is None:
            raise AdminError(404, "not_found", "no such fault")
        return JSONResponse({"deleted": fault_id})

    async def ai_config(self, request: Request) -> Response:
        if request.method == "POST":
            body = await parse_body(request, AiConfigIn)
            self.endpoint.latency = body.latency_ms / 1000
        return JSONResponse(self.endpoint.describe())

    def routes(self) -> list[Route]:
        return [
            Route("/admin/health", _health, methods=["GET"]),
            Route("/admin/server", self.server, methods=["GET"]),
            Route("/admin/accounts", self.create_account, methods=["POST"]),
            Route("/admin/accounts", self.list_accounts, methods=["GET"]),
            Route("/admin/chats", self.create_chat, methods=["POST"]),
            Route("/admin/messages", self.list_messages, methods=["GET"]),
            Route("/admin/messages", self.post_message, methods=["POST"]),
            Route("/admin/folders", self.file_dialog, methods=["POST"]),
            Route("/admin/pins", self.pin_dialog, methods=["POST"]),
            Route("/admin/faults", self.add_fault, methods=["POST"]),
            Route("/admin/faults", self.list_faults, methods=["GET"]),
            Route("/admin/faults/{fault_id}", self.delete_fault, methods=["DELETE"]),
            Route("/admin/ledger", self.ledger, methods=["GET"]),
            Route("/admin/ledger/overlaps", self.overlaps, methods=["GET"]),
            Route("/admin/config", self.config, methods=["GET", "POST"]),
            Route("/admin/reset", self.reset, methods=["POST"]),
            Route("/admin/ai/faults", self.ai_fault, methods=["POST"]),
            Route("/admin/ai/faults/{fault_id}", self.ai_fault_delete, methods=["DELETE"]),
            Route("/admin/ai/config", self.ai_config, methods=["GET", "POST"]),
        ]


async def _health(_request: Request) -> Response:
    return JSONResponse({"ok": True})


async def _admin_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AdminError)
    return error_response(exc.status, exc.code, exc.message)


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail))


async def _unexpected(_request: Request, exc: Exception) -> Response:
    log.exception("admin API failure", exc_info=exc)
    return error_response(500, "internal", "internal error")


def create_app(core: Core, endpoint: ModelEndpoint) -> Starlette:
    """The ASGI app served on the admin port."""
    api = AdminApi(core, endpoint)
    return Starlette(
        routes=[*api.routes(), *model_routes(endpoint)],
        exception_handlers={
            AdminError: _admin_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )
