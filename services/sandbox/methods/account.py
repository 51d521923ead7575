"""account.* : the 2FA parameters the client needs to build its SRP proof."""

from typing import Any

from telethon.tl import functions

from services.sandbox import srp
from services.sandbox.errors import unauthorized
from services.sandbox.rpc import Call, method


@method(functions.account.GetPasswordRequest, auth=False)
def get_password(call: Call, _req: Any) -> Any:
    key = call.key
    user_id = key.password_user if key.user_id is None else key.user_id
    account = call.core.world.accounts.get(user_id) if user_id is not None else None
    if account is None or (key.user_id is not None and key.revoked):
        raise unauthorized()
    if account.password is None:
        return srp.password_tl(None, None)
    key.srp = srp.challenge(account.password)
    return srp.password_tl(account.password, key.srp)
