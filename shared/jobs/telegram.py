"""Telegram job types: params and results, shared by gateway and worker."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError
from telethon.extensions import html, markdown

from shared.config import BaseAppSettings
from shared.jobs.contract import JobType, ParamsRejected, QueueKind, RetryPolicy, register
from shared.jobs.dialog_cursor import INVALID as INVALID_CURSOR
from shared.jobs.dialog_cursor import DialogCursor
from shared.text import NUL_REFUSED

_USERNAME = re.compile(r"@?([A-Za-z][A-Za-z0-9_]{3,31})")
_PHONE = re.compile(r"\+[0-9]{7,15}")
_LINK = re.compile(
    r"(?:https?://)?(?:www\.)?(?:t\.me|telegram\.me|telegram\.dog)/([^?#]+?)/?(?:[?#].*)?",
    re.IGNORECASE,
)
_INVITE = re.compile(r"(?:\+|(?i:joinchat)/)([A-Za-z0-9_\-]{4,64})")
# A post's link: /<message>, or /<topic>/<message> for a message in a forum topic.
_PRIVATE_POST = re.compile(r"(?i:c)/([0-9]{1,15})(?:/[0-9]{1,10}){0,2}")
_PUBLIC = re.compile(r"(?:(?i:s)/)?([A-Za-z][A-Za-z0-9_]{3,31})(?:/[0-9]{1,10}){0,2}")
# t.me routes Telegram keeps for itself (core.telegram.org/api/links): no chat has
# these names, and a link to one (a proxy, a sticker set, a login code) names no peer.
RESERVED_ROUTES = frozenset(
    {
        "addemoji",
        "addlist",
        "addstickers",
        "addtheme",
        "bg",
        "boost",
        "confirmphone",
        "contact",
        "giftcode",
        "invoice",
        "iv",
        "joinchat",
        "login",
        "m",
        "msg",
        "nft",
        "proxy",
        "setlanguage",
        "share",
        "socks",
    }
)
INT32_MAX = 2**31 - 1  # message ids and offsets are MTProto ints
INT64_MAX = 2**63 - 1
CHANNEL_MARK = 10**12  # a channel's marked id is -(CHANNEL_MARK + id): telethon.utils.get_peer_id
INVITE_PREFIX = "https://t.me/+"
TEXT_MAX = 4096  # what Telegram takes: UTF-16 code units of the text once markup is parsed
TEXT_MAX_WRITTEN = 65_536  # what a job may carry, markup included


def normalize_peer(value: str) -> str:
    """One spelling per peer: ``me``, ``@username`` (lower case), a non-zero 64-bit
    numeric id, ``+phone`` or an invite link ``https://t.me/+hash``.

    t.me links (also telegram.me, telegram.dog, www.; their path's prefixes in any case)
    become what they name: a public chat or its post (``t.me/name/45``, in a forum topic
    ``t.me/name/7/45``) -> @username, a private post ``t.me/c/123/45`` (or
    ``t.me/c/123/7/45``) -> the channel's marked id ``-1000000000123``
    (``-(10**12 + 123)``, as Telethon marks channels), ``t.me/+15551234567`` -> the
    phone, ``t.me/+hash`` and ``t.me/joinchat/hash`` -> the invite link. Telegram's own
    routes (``RESERVED_ROUTES``: t.me/proxy, t.me/share, ...) and anything else are
    refused; a NUL character anywhere is ``invalid_character``, as in any params.
    """
    if "\x00" in value:  # answered as the gateway answers it in any other field
        raise PydanticCustomError("invalid_character", NUL_REFUSED)
    text = value.strip()
    if text.lower() in ("me", "self"):
        return "me"
    if re.fullmatch(r"-?[0-9]{1,20}", text):
        number = int(text)
        if number == 0 or abs(number) > INT64_MAX:
            raise ValueError("a numeric peer id must be a non-zero 64-bit integer")
        return str(number)
    if _PHONE.fullmatch(text):
        return text
    if username := _USERNAME.fullmatch(text):
        return "@" + username.group(1).lower()
    if (link := _LINK.fullmatch(text)) and (peer := _linked_peer(link.group(1))):
        return peer
    raise ValueError("peer must be 'me', @username, a numeric id, a t.me link or +phone")


def _linked_peer(path: str) -> str | None:
    """The peer a t.me link's path names (see ``normalize_peer``), None for none."""
    route = path.split("/", 1)[0].lower()
    if route in RESERVED_ROUTES and not _INVITE.fullmatch(path):
        raise ValueError(
            f"t.me/{route} is one of Telegram's own links and names no peer"
            + ("; an invite link needs its hash" if route == "joinchat" else "")
        )
    if _PHONE.fullmatch(path):
        return path
    if invite := _INVITE.fullmatch(path):
        return INVITE_PREFIX + invite.group(1)
    if (post := _PRIVATE_POST.fullmatch(path)) and int(post.group(1)):
        return str(-(CHANNEL_MARK + int(post.group(1))))
    if public := _PUBLIC.fullmatch(path):
        return "@" + public.group(1).lower()
    return None


def invite_hash(peer: str) -> str | None:
    """The hash of a normalised invite link, None for any other peer."""
    return peer.removeprefix(INVITE_PREFIX) if peer.startswith(INVITE_PREFIX) else None


def _chat_target(value: str) -> str:
    peer = normalize_peer(value)
    if not peer.startswith("@") and invite_hash(peer) is None:
        raise ValueError("target must be the @username of a public chat or an invite link")
    return peer


def _group_peer(value: str) -> str:
    peer = normalize_peer(value)
    if peer == "me" or peer.startswith("+") or peer.isdigit():
        raise ValueError("peer must be a group or channel: @username, a -100... id or a link")
    if peer.startswith("-") and int(peer) >= -CHANNEL_MARK:  # a basic group: no members API
        raise ValueError("peer must be a supergroup or channel: @username, a -100... id or a link")
    return peer


def _some_text(value: str) -> str:
    if not value.strip():
        raise ValueError("text must contain more than whitespace")
    return value


def _peer_text(value: Any) -> Any:
    """A numeric id sent as a JSON number, as its text (``true`` is no id)."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _whole_float(value: Any) -> Any:
    """A JSON number with nothing after the point as the int it is (``5.0``, ``1e1``)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# Ids, counts and flags take their own JSON type only (``true`` is no message id, ``"yes"``
# no flag, ``"5"`` no count), field by field: a model-wide strict mode would also refuse
# the account id as a UUID's text. A peer may be a JSON number: docs list numeric ids.
Peer = Annotated[
    str,
    BeforeValidator(_peer_text, json_schema_input_type=str | int),
    AfterValidator(normalize_peer),
    Field(description="me, @username, numeric id, t.me link or +phone"),
]
GroupPeer = Annotated[
    str,
    BeforeValidator(_peer_text, json_schema_input_type=str | int),
    AfterValidator(_group_peer),
    Field(description="a group or channel: @username, -100... id or t.me link"),
]
# JSON has one number type, so an id or count may come as 5.0 (json.dumps of a float, a
# language whose numbers are doubles); a fraction is none. The validator goes after any
# bounds, which the schema then shows as the integer's minimum and maximum.
_WHOLE = BeforeValidator(_whole_float)
JsonInt = Annotated[StrictInt, _WHOLE]
MessageId = Annotated[StrictInt, Field(ge=1, le=INT32_MAX), _WHOLE]
Offset = Annotated[StrictInt, Field(ge=0, le=INT32_MAX), _WHOLE]


class AccountParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account_id: uuid.UUID


class PeerParams(AccountParams):
    peer: Peer


def utf16_length(text: str) -> int:
    """The length Telegram counts: UTF-16 code units (an emoji is often two)."""
    return len(text.encode("utf-16-le")) // 2


class SendMessageParams(PeerParams):
    parse_mode: Literal["markdown", "html"] | None = None
    text: Annotated[str, AfterValidator(_some_text)] = Field(
        min_length=1,
        max_length=TEXT_MAX_WRITTEN,
        description=f"at most {TEXT_MAX} UTF-16 code units once the markup is parsed",
    )
    reply_to: MessageId | None = None
    silent: StrictBool = False
    link_preview: StrictBool = True

    @field_validator("text")
    @classmethod
    def _fits_one_message(cls, text: str, info: ValidationInfo) -> str:
        """What Telegram would refuse, refused here: the text as sent (the markup
        parsed the way the worker's client parses it) must be non-blank and at most
        ``TEXT_MAX`` UTF-16 code units."""
        mode = info.data.get("parse_mode")
        sent = text
        if mode is not None:
            try:
                sent, entities = (markdown if mode == "markdown" else html).parse(text)
            except Exception as exc:  # Telethon's parsers fail on some markup, not cleanly
                raise PydanticCustomError(
                    "markup_invalid",
                    "text's {mode} markup cannot be parsed ({error})",
                    {"mode": mode, "error": type(exc).__name__},
                ) from None
            for entity in entities:  # ids in links (tg://user?id=, emoji-id) are 64-bit
                url = getattr(entity, "url", None) or ""
                mentioned = url.removeprefix("tg://user?id=") if url.startswith("tg://") else ""
                named = int(mentioned) if mentioned.lstrip("-").isdigit() else None
                for value in (named, getattr(entity, "document_id", None)):
                    if isinstance(value, int) and not -(2**63) <= value < 2**63:
                        raise PydanticCustomError(
                            "markup_invalid",
                            "text's {mode} markup names an id past 64 bits",
                            {"mode": mode},
                        )
            if not sent.strip():
                raise PydanticCustomError(
                    "message_empty",
                    "text is empty once its {mode} markup is parsed",
                    {"mode": mode},
                )
        length = utf16_length(sent)
        if length > TEXT_MAX:
            raise PydanticCustomError(
                "message_too_long",
                "text is {length} UTF-16 code units{parsed}; Telegram takes at most {limit}",
                {
                    "length": length,
                    "parsed": " once its markup is parsed" if mode else "",
                    "limit": TEXT_MAX,
                },
            )
        return text


class SendMessageResult(BaseModel):
    # None only when Telegram refused a re-run's resend (the message exists) and the
    # chat did not show which message it was (see resend_refused).
    message_id: int | None
    random_id: int
    date: datetime | None = None
    # True when an earlier attempt had sent the message and Telegram refused to name it
    # again (RANDOM_ID_DUPLICATE): delivered once, found by reading the chat.
    resend_refused: bool = False


class GetHistoryParams(PeerParams):
    limit: JsonInt = Field(default=50, ge=1, le=100)
    offset_id: Offset = 0
    min_id: Offset = 0


class MessageOut(BaseModel):
    id: int
    date: datetime | None
    sender_id: int | None
    text: str
    reply_to: int | None
    media: str | None
    action: str | None = Field(
        default=None,
        description="A service message's action (chat_add_user, channel_create, ...), its "
        "text empty; null for other messages.",
    )


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
    id: int = Field(
        description="The marked id, as jobs take it for a peer and messages' sender_id "
        "spell it: a user's id, -id for a basic group, -100... for a supergroup or channel."
    )
    kind: Literal["user", "group", "supergroup", "channel"] = Field(
        description="group: a basic group; channel: a broadcast channel."
    )
    username: str | None
    title: str | None = Field(description="A chat's title, or a user's first and last name.")


class ResolveResult(BaseModel):
    peer: PeerOut


_TELEGRAM_RETRY = RetryPolicy(max_tries=5, base_seconds=1.0, cap_seconds=60.0)


class GetMessagesParams(PeerParams):
    ids: list[MessageId] = Field(min_length=1, max_length=100)


DIALOGS_PAGE_MAX = 100  # what Telegram lists per messages.getDialogs


class DialogsParams(AccountParams):
    archived: StrictBool = Field(
        default=False, description="List the archive (folder 1) instead of the main list."
    )
    offset: str | None = Field(
        default=None,
        max_length=64,
        description="The previous page's next_offset, to go on from there; null: the top.",
    )
    limit: JsonInt = Field(default=100, ge=1, le=500, description="Chats to fetch, page by page.")
    page_size: JsonInt = Field(
        default=DIALOGS_PAGE_MAX,
        ge=1,
        le=DIALOGS_PAGE_MAX,
        description=f"Chats per Telegram request (at most {DIALOGS_PAGE_MAX}).",
    )

    @field_validator("offset")
    @classmethod
    def _a_cursor_of_this_list(cls, offset: str | None, info: ValidationInfo) -> str | None:
        """A cursor this job type returned, for the list (main or archive) asked for;
        whose listing returned it is ``start``'s check, which takes the key."""
        if offset is None:
            return None
        cursor = DialogCursor.read(offset)
        archived = info.data.get("archived", False)
        if cursor.folder != int(archived):
            raise PydanticCustomError(
                INVALID_CURSOR,
                "offset is a cursor of the {other} list, not of the one asked for",
                {"other": "archived" if cursor.folder else "main"},
            )
        return offset

    def start(self, settings: BaseAppSettings) -> DialogCursor | None:
        """Where the listing starts: the top, or the cursor ``offset`` holds, which a
        listing of this account must have returned (``ParamsRejected`` otherwise)."""
        if self.offset is None:
            return None
        try:
            return DialogCursor.decode(self.offset, settings.dialog_cursor_key(), self.account_id)
        except PydanticCustomError as exc:
            raise ParamsRejected(
                "invalid_params", "offset", exc.message(), INVALID_CURSOR
            ) from None


def check_offset(params: DialogsParams, settings: BaseAppSettings) -> None:
    """Gateway: refuse a cursor that no listing of the account returned."""
    params.start(settings)


class DialogOut(BaseModel):
    peer: PeerOut
    unread_count: int
    last_message_id: int | None
    pinned: bool


class DialogsResult(BaseModel):
    dialogs: list[DialogOut]
    next_offset: str | None = Field(
        description="Pass it back as offset for the chats after these; null once the list ends."
    )
    cut_short: str | None = Field(
        default=None,
        description="Why the listing stopped before limit with next_offset to go on from "
        "(flood_wait, reconnecting, ...: what made a page wait or fail after others were "
        "fetched); null when it stopped at limit or at the end.",
    )


class JoinChatParams(AccountParams):
    target: Annotated[
        str,
        AfterValidator(_chat_target),
        Field(description="@username of a public chat, or an invite link"),
    ]


class ForwardParams(AccountParams):
    from_peer: Peer
    to_peer: Peer
    ids: list[MessageId] = Field(min_length=1, max_length=100)
    silent: StrictBool = False


class ForwardResult(BaseModel):
    message_ids: list[int]
    # True when an earlier attempt had forwarded the messages and Telegram refused to
    # name them again (RANDOM_ID_DUPLICATE): forwarded once, their ids not known.
    resend_refused: bool = False


class MarkReadParams(PeerParams):
    max_id: Offset = Field(default=0, description="0: everything")


class OkResult(BaseModel):
    ok: bool


class ParticipantsParams(AccountParams):
    peer: GroupPeer
    offset: Offset = 0
    limit: JsonInt = Field(
        default=200, ge=1, le=10_000, description="Members to fetch, page by page."
    )
    page_size: JsonInt = Field(
        default=200, ge=1, le=200, description="Members per Telegram request (at most 200)."
    )
    search: str = Field(default="", max_length=64)


class ParticipantsResult(BaseModel):
    participants: list[UserOut]
    total: int
    next_offset: int | None
    cut_short: str | None = Field(
        default=None,
        description="Why the listing stopped before limit with next_offset to go on from "
        "(flood_wait, reconnecting, ...: what made a page wait or fail after others were "
        "fetched); null when it stopped at limit or at the end.",
    )


def _register(
    name: str,
    params: type[BaseModel],
    result: type[BaseModel],
    summary: str,
    timeout: float = 60,
    validate: Callable[[Any, Any], None] | None = None,
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
            validate=validate,
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
_register(
    "telegram.get_dialogs",
    DialogsParams,
    DialogsResult,
    "One page of the account's chats, main list or archive, newest first.",
    timeout=120,
    validate=check_offset,
)
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
