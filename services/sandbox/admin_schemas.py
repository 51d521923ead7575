"""Request bodies of the admin API, validated so bad input is a 4xx, never a 500."""

import functools
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from starlette.requests import Request
from starlette.responses import JSONResponse
from telethon.tl.alltlobjects import tlobjects
from telethon.tl.tlobject import TLRequest

from .faults import FaultKind
from .model import AiFaultKind
from .rpc import tl_name

M = TypeVar("M", bound=BaseModel)


class AdminError(Exception):
    """An admin request that must be answered with a 4xx JSON error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def parse_body(request: Request, model: type[M]) -> M:
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())) or "body"
        raise AdminError(422, "invalid_request", f"{where}: {first['msg']}") from exc


@functools.cache
def known_methods() -> frozenset[str]:
    """Every TL method name of the client's layer."""
    return frozenset(
        tl_name(cls)
        for cls in tlobjects.values()
        if isinstance(cls, type) and issubclass(cls, TLRequest)
    )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AccountIn(_Strict):
    phone: str | None = Field(default=None, max_length=32)
    username: str | None = Field(default=None, max_length=33)
    first_name: str = Field(default="", max_length=64)
    last_name: str = Field(default="", max_length=64)
    password: str | None = Field(default=None, min_length=1, max_length=256)
    hint: str = Field(default="", max_length=64)
    authorized: bool = True


class SeedMessage(_Strict):
    text: str = Field(min_length=1, max_length=4096)
    from_id: int | None = None


class ChatIn(_Strict):
    title: str = Field(min_length=1, max_length=128)
    kind: Literal["channel", "supergroup"] = "supergroup"
    creator_id: int
    username: str | None = Field(default=None, max_length=33)
    invite_hash: str | None = Field(default=None, min_length=4, max_length=64)
    members: list[int] = Field(default_factory=list, max_length=100_000)
    messages: list[SeedMessage] = Field(default_factory=list, max_length=10_000)


class MessageIn(_Strict):
    from_id: int
    peer: str = Field(min_length=1, max_length=64)
    text: str = Field(min_length=1, max_length=4096)
    random_id: int | None = None


class FolderIn(_Strict):
    user_id: int
    peer: str = Field(min_length=1, max_length=64)
    folder_id: Literal[0, 1] = 1


class PinIn(_Strict):
    user_id: int
    peer: str = Field(min_length=1, max_length=64)
    pinned: bool = True


class FaultIn(_Strict):
    user_id: int
    kind: FaultKind
    method: str | None = Field(default=None, max_length=128)
    seconds: float = Field(default=0.0, ge=0, le=86_400)
    times: int | None = Field(default=None, ge=1, le=1_000_000)
    error: str | None = Field(default=None, pattern=r"^[A-Z][A-Z0-9_]{0,63}$")

    @model_validator(mode="after")
    def _error_named(self) -> "FaultIn":
        if (self.kind == "error") != (self.error is not None):
            raise ValueError("error names the RPC error of an error fault, and only of one")
        return self

    @field_validator("method")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        if value is not None and value not in known_methods():
            raise ValueError(f"unknown TL method {value!r}")
        return value


class ConfigIn(_Strict):
    auth_key_duplicated: bool | None = None
    random_id_duplicate: bool | None = None
    participants_listed: int | None = Field(default=None, ge=0)
    sign_up_unknown: bool | None = None


class AiFaultIn(_Strict):
    kind: AiFaultKind
    times: int | None = Field(default=1, ge=1, le=1_000_000)
    retry_after: int = Field(default=1, ge=0, le=3600)
    seconds: float = Field(default=30.0, ge=0, le=3600)


class AiConfigIn(_Strict):
    latency_ms: int = Field(ge=0, le=600_000)


def int_param(params: Any, name: str, *, required: bool = True) -> int | None:
    raw = params.get(name)
    if raw is None:
        if required:
            raise AdminError(422, "invalid_request", f"{name} is required")
        return None
    try:
        return int(raw)
    except ValueError:
        raise AdminError(422, "invalid_request", f"{name} must be an integer") from None
