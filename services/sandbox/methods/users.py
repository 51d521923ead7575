"""users.* : who is who."""

from typing import Any

from telethon.tl import functions, types

from services.sandbox.errors import RpcFail
from services.sandbox.peers import input_user
from services.sandbox.render import user_tl
from services.sandbox.rpc import Call, method


@method(functions.users.GetUsersRequest)
def get_users(call: Call, req: Any) -> list[Any]:
    me = call.account
    found: list[Any] = []
    for item in req.id:
        try:
            found.append(user_tl(me.id, input_user(call.core.world, me, item)))
        except RpcFail:
            user_id = getattr(item, "user_id", 0)
            found.append(types.UserEmpty(id=user_id))
    return found
