"""contacts.* : resolving usernames and phone numbers."""

import re
from typing import Any

from telethon.tl import functions, types

from services.sandbox.errors import bad_request
from services.sandbox.render import entities, peer_tl
from services.sandbox.rpc import Call, method
from services.sandbox.state import PeerRef

_USERNAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{3,31}$")


def _resolved(call: Call, peer: PeerRef) -> Any:
    me = call.account
    users, chats = entities(call.core.world, me.id, [peer])
    return types.contacts.ResolvedPeer(peer=peer_tl(peer), chats=chats, users=users)


@method(functions.contacts.ResolveUsernameRequest)
def resolve_username(call: Call, req: Any) -> Any:
    username = req.username.lstrip("@")
    if not _USERNAME.match(username):
        raise bad_request("USERNAME_INVALID")
    peer = call.core.world.by_username.get(username.lower())
    if peer is None:
        raise bad_request("USERNAME_NOT_OCCUPIED")
    return _resolved(call, peer)


@method(functions.contacts.ResolvePhoneRequest)
def resolve_phone(call: Call, req: Any) -> Any:
    phone = re.sub(r"\D", "", req.phone)
    user_id = call.core.world.by_phone.get(phone)
    if user_id is None:
        raise bad_request("PHONE_NOT_OCCUPIED")
    return _resolved(call, PeerRef("user", user_id))
