"""Telegram job types: params and results, shared by gateway and worker."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from shared.jobs.contract import JobType, QueueKind, RetryPolicy, register

_USERNAME = re.compile(r"^@?[A-Za-z][A-Za-z0-9_]{3,31}$")
_LINK = re.compile(
    r"^(?:https?://)?(?:t\.me|telegram\.me)/(?:\+|joinchat/)?[A-Za-z0-9_\-]{4,64}/?$"
)
_PHONE = re.compile(r"^\+[0-9]{7,15}$")


def normalize_peer(value: str) -> str:
    """Accept ``me``, @username, a numeric id, a t.me link or +phone; reject the rest."""
    text = value.strip()
    if text.lower() in ("me", "self"):
        return "me"
    if re.fullmatch(r"-?[0-9]{1,20}", text) or _PHONE.match(text):
        return text
    if _USERNAME.match(text):
        return "@" + text.lstrip("@")
    if _LINK.match(text):
        return text
    raise ValueError("peer must be 'me', @username, a numeric id, a t.me link or +phone")


Peer = Annotated[
    str,
    AfterValidator(normalize_peer),
    Field(description="me, @username, numeric id, t.me link or +phone"),
]


class AccountParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account_id: uuid.UUID


class PeerParams(AccountParams):
    peer: Peer


class SendMessageParams(PeerParams):
    text: str = Field(min_length=1, max_length=4096)
    parse_mode: Literal["markdown", "html"] | None = None
    reply_to: int | None = Field(default=None, ge=1)
    silent: bool = False
    link_preview: bool = True


class SendMessageResult(BaseModel):
    message_id: int
    random_id: int
    date: datetime | None = None


class GetHistoryParams(PeerParams):
    limit: int = Field(default=50, ge=1, le=100)
    offset_id: int = Field(default=0, ge=0)
    min_id: int = Field(default=0, ge=0)


class MessageOut(BaseModel):
    id: int
    date: datetime | None
    sender_id: int | None
    text: str
    reply_to: int | None
    media: str | None


class MessagesResult(BaseModel):
    messages: list[MessageOut]


class UserOut(BaseModel):
    id: int
    username: str | None
    first_name: str | None
    last_name: str | None
    phone: str | None
    bot: bool


class PeerOut(BaseModel):
    id: int
    kind: Literal["user", "group", "channel"]
    username: str | None
    title: str | None


class ResolveResult(BaseModel):
    peer: PeerOut


_TELEGRAM_RETRY = RetryPolicy(max_tries=5, base_seconds=1.0, cap_seconds=60.0)


class GetMessagesParams(PeerParams):
    ids: list[int] = Field(min_length=1, max_length=100)


class DialogsParams(AccountParams):
    limit: int = Field(default=100, ge=1, le=500)


class DialogOut(BaseModel):
    peer: PeerOut
    unread_count: int
    last_message_id: int | None
    pinned: bool


class DialogsResult(BaseModel):
    dialogs: list[DialogOut]


class JoinChatParams(AccountParams):
    target: Annotated[Peer, Field(description="@username of a public chat, or an invite link")]


class ForwardParams(AccountParams):
    from_peer: Peer
    to_peer: Peer
    ids: list[int] = Field(min_length=1, max_length=100)
    silent: bool = False


class ForwardResult(BaseModel):
    message_ids: list[int]


class MarkReadParams(PeerParams):
    max_id: int = Field(default=0, ge=0, description="0: everything")


class OkResult(BaseModel):
    ok: bool


class ParticipantsParams(PeerParams):
    offset: int = Field(default=0, ge=0)
    limit: int = Field(default=200, ge=1, le=10_000, description="Members to fetch, page by page.")
    page_size: int = Field(
        default=200, ge=1, le=200, description="Members per Telegram request (at most 200)."
    )
    search: str = Field(default="", max_length=64)


class ParticipantsResult(BaseModel):
    participants: list[UserOut]
    total: int
    next_offset: int | None


def _register(
    name: str,
    params: type[BaseModel],
    result: type[BaseModel],
    summary: str,
    timeout: float = 60,
) -> JobType[Any, Any]:
    return register(
        JobType(
            name=name,
            params=params,
            result=result,
            queue=QueueKind.TELEGRAM,
            timeout=timeout,
            summary=summary,
            retry=_TELEGRAM_RETRY,
        )
    )


GET_ME = _register("telegram.get_me", AccountParams, UserOut, "The account's own user.")
SEND_MESSAGE = _register(
    "telegram.send_message",
    SendMessageParams,
    SendMessageResult,
    "Send a text message exactly once (random_id derived from the job id).",
)
GET_HISTORY = _register(
    "telegram.get_history", GetHistoryParams, MessagesResult, "Messages of a chat, newest first."
)
RESOLVE = _register(
    "telegram.resolve", PeerParams, ResolveResult, "Resolve a username, phone, id or t.me link."
)
_register("telegram.get_messages", GetMessagesParams, MessagesResult, "Messages by id.")
_register("telegram.get_dialogs", DialogsParams, DialogsResult, "The account's chats.", timeout=120)
_register("telegram.join_chat", JoinChatParams, ResolveResult, "Join by @username or invite link.")
_register(
    "telegram.forward_messages",
    ForwardParams,
    ForwardResult,
    "Forward messages exactly once (random_ids derived from the job id).",
)
_register("telegram.mark_read", MarkReadParams, OkResult, "Mark a chat read up to a message.")
_register(
    "telegram.get_participants",
    ParticipantsParams,
    ParticipantsResult,
    "One page of a group's or channel's members.",
    timeout=120,
)
