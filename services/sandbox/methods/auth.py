"""auth.* : the phone + code login, 2FA, and logging out."""

import re
import secrets
from typing import Any

from telethon.tl import functions, types

from services.sandbox import srp
from services.sandbox.errors import RpcFail, bad_request
from services.sandbox.keys import KeyRecord
from services.sandbox.render import user_tl
from services.sandbox.rpc import Call, method
from services.sandbox.state import Account

_PHONE = re.compile(r"^\d{5,15}$")


def normalize_phone(phone: str) -> str:
    """Digits only, as Telegram stores numbers (PHONE_NUMBER_INVALID otherwise)."""
    digits = re.sub(r"[\s()+-]", "", phone)
    if not _PHONE.match(digits):
        raise bad_request("PHONE_NUMBER_INVALID")
    return digits


def authorize(call: Call, account: Account) -> Any:
    """Bind the caller's key to the account, as a successful login does."""
    key: KeyRecord = call.key
    key.user_id = account.id
    key.revoked = False
    key.password_user = None
    key.srp = None
    key.codes.clear()
    return types.auth.Authorization(user=user_tl(account.id, account))


def _sent_code(call: Call, phone: str) -> Any:
    code_hash = secrets.token_hex(8)
    call.key.codes[code_hash] = phone
    return types.auth.SentCode(
        type=types.auth.SentCodeTypeApp(length=len(call.core.login_code)),
        phone_code_hash=code_hash,
    )


@method(functions.auth.SendCodeRequest, auth=False)
def send_code(call: Call, req: Any) -> Any:
    phone = normalize_phone(req.phone_number)
    user_id = call.core.world.by_phone.get(phone)
    if user_id is not None and call.core.world.accounts[user_id].banned:
        raise bad_request("PHONE_NUMBER_BANNED")
    return _sent_code(call, phone)


@method(functions.auth.ResendCodeRequest, auth=False)
def resend_code(call: Call, req: Any) -> Any:
    phone = normalize_phone(req.phone_number)
    if call.key.codes.get(req.phone_code_hash) != phone:
        raise bad_request("PHONE_CODE_EXPIRED")
    return _sent_code(call, phone)


def _check_code(call: Call, phone_number: str, code_hash: str, code: str | None) -> str:
    phone = normalize_phone(phone_number)
    if not code_hash:
        raise bad_request("PHONE_CODE_HASH_EMPTY")
    if call.key.codes.get(code_hash) != phone:
        raise bad_request("PHONE_CODE_EXPIRED")
    if not code:
        raise bad_request("PHONE_CODE_EMPTY")
    if code != call.core.login_code:
        raise bad_request("PHONE_CODE_INVALID")
    return phone


@method(functions.auth.CancelCodeRequest, auth=False)
def cancel_code(call: Call, req: Any) -> Any:
    phone = normalize_phone(req.phone_number)
    if call.key.codes.get(req.phone_code_hash) != phone:
        raise bad_request("PHONE_CODE_EXPIRED")
    del call.key.codes[req.phone_code_hash]
    return True


@method(functions.auth.SignInRequest, auth=False)
def sign_in(call: Call, req: Any) -> Any:
    phone = _check_code(call, req.phone_number, req.phone_code_hash, req.phone_code)
    world = call.core.world
    user_id = world.by_phone.get(phone)
    if user_id is None and not call.core.settings.sign_up_unknown:
        return types.auth.AuthorizationSignUpRequired()  # Telethon: PhoneNumberUnoccupied
    # Unknown numbers are signed up on the spot: the client library can no
    # longer call auth.signUp itself, and tests need fresh accounts.
    account = world.accounts[user_id] if user_id is not None else world.create_account(phone)
    if account.banned:
        raise bad_request("PHONE_NUMBER_BANNED")
    if account.password is not None:
        call.key.password_user = account.id
        raise RpcFail(401, "SESSION_PASSWORD_NEEDED")
    return authorize(call, account)


@method(functions.auth.SignUpRequest, auth=False)
def sign_up(call: Call, req: Any) -> Any:
    phone = normalize_phone(req.phone_number)
    if call.key.codes.get(req.phone_code_hash) != phone:
        raise bad_request("PHONE_CODE_EXPIRED")
    if not req.first_name.strip():
        raise bad_request("FIRSTNAME_INVALID")
    account = call.core.world.create_account(phone, None, req.first_name, req.last_name)
    return authorize(call, account)


@method(functions.auth.CheckPasswordRequest, auth=False)
def check_password(call: Call, req: Any) -> Any:
    key = call.key
    account = call.core.world.accounts.get(key.password_user or 0)
    if account is None or account.password is None:
        raise bad_request("PASSWORD_HASH_INVALID")
    check = req.password
    if not isinstance(check, types.InputCheckPasswordSRP):
        raise bad_request("PASSWORD_HASH_INVALID")
    if key.srp is None or key.srp.srp_id != check.srp_id:
        raise bad_request("SRP_ID_INVALID")
    challenge, key.srp = key.srp, None
    if not srp.verify(account.password, challenge, check.A, check.M1):
        raise bad_request("PASSWORD_HASH_INVALID")
    return authorize(call, account)


@method(functions.auth.LogOutRequest)
def log_out(call: Call, _req: Any) -> Any:
    _ = call.account
    call.key.user_id = None
    return types.auth.LoggedOut()
