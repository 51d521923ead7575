"""RPC errors the sandbox answers with, named and coded as Telegram does."""


class RpcFail(Exception):
    """Answer the current request with rpc_error(code, message)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


def bad_request(message: str) -> RpcFail:
    return RpcFail(400, message)


def unauthorized(message: str = "AUTH_KEY_UNREGISTERED") -> RpcFail:
    return RpcFail(401, message)


def forbidden(message: str) -> RpcFail:
    return RpcFail(403, message)


def flood(message: str) -> RpcFail:
    return RpcFail(420, message)


METHOD_INVALID = "INPUT_METHOD_INVALID"
