"""Telegram job handlers: thin; the runtime owns clients, floods, budgets and errors."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from telethon import errors, types, utils
from telethon.extensions import html, markdown
from telethon.tl.functions.contacts import ResolvePhoneRequest
from telethon.tl.functions.messages import CheckChatInviteRequest, SendMessageRequest
from telethon.tl.functions.users import GetUsersRequest

from services.worker.context import JobContext
from services.worker.telegram.errors import TRANSIENT
from services.worker.telegram.runtime import (
    MESSAGES,
    AccountSession,
    message_out,
    random_id_for,
)
from shared.aio import outlast_cancellation
from shared.errors import PermanentFailure
from shared.jobs.telegram import (
    AccountParams,
    GetHistoryParams,
    MessagesResult,
    PeerOut,
    PeerParams,
    ResolveResult,
    SendMessageParams,
    SendMessageResult,
    UserOut,
    invite_hash,
    normalize_peer,
)
from shared.logs import get_logger

log = get_logger(__name__)
T = TypeVar("T")


async def get_me(ctx: JobContext, params: AccountParams) -> UserOut:
    async with ctx.state.telegram.session(ctx.tenant, params.account_id) as tg:
        # The raw request: client.get_me() turns an unauthorised session into None.
        users = await tg.call(
            "users.getUsers", lambda: tg.client(GetUsersRequest([types.InputUserSelf()]))
        )
    return user_out(users[0])


def user_out(user: Any) -> UserOut:
    return UserOut(
        id=user.id,
        username=user.username,
        first_name=user.first_name,
        last_name=user.last_name,
        phone=user.phone,
        bot=bool(user.bot),
    )


# Phones resolved per account (contacts.resolvePhone is tightly limited by Telegram, and
# a user's phone is usually hidden, so Telethon's entity cache cannot find it again).
PHONE_PEERS_MAX = 10_000
# Chats read to find a numeric id the client does not know (once per account per
# DIALOG_SCAN_SECONDS, see TelegramRuntime.may_scan_dialogs).
DIALOGS_SCAN = 200


# The method that fetches a peer of each kind by its id (and access hash).
FETCHED_BY = {
    types.PeerUser: "users.getUsers",
    types.PeerChat: "messages.getChats",
    types.PeerChannel: "channels.getChannels",
}


def _lookup(peer: str) -> tuple[str, Any]:
    """The MTProto method that finding ``peer`` (an @username or a numeric id) may call,
    and what Telethon is given."""
    if peer.startswith("@"):
        return "contacts.resolveUsername", peer
    number = int(peer)  # what remains of a normalised peer is a numeric (marked) id
    return FETCHED_BY[utils.resolve_id(number)[1]], number


async def invited(tg: AccountSession, invite: str) -> Any:
    """The chat an invite link's hash names, if the account is in it (or Telegram lets it
    peek in). One it is not in fails as ``not_a_member``, with what the invite shows of
    the chat: Telethon's own lookup would fail as if the link named nothing."""
    found = await tg.call(
        "messages.checkChatInvite", lambda: tg.client(CheckChatInviteRequest(invite))
    )
    if isinstance(found, types.ChatInviteAlready | types.ChatInvitePeek):
        return found.chat
    title = getattr(found, "title", None)
    raise PermanentFailure(
        "not_a_member",
        f"The account is not a member of the chat this invite link names ({title!r}); "
        "join it first with telegram.join_chat.",
        {
            "title": title,
            "kind": _chat_kind(bool(found.channel), bool(found.broadcast)),
            "member_count": found.participants_count,
        },
    )


def _chat_kind(channel: bool, broadcast: bool) -> str:
    """A chat's ``PeerOut.kind``: a basic group, a supergroup or a broadcast channel."""
    if not channel:
        return "group"
    return "channel" if broadcast else "supergroup"


async def _user_by_phone(tg: AccountSession, phone: str) -> Any:
    """The user with ``phone``, asked of Telegram once per account and phone: later
    lookups (a resolve or any job naming the phone) take the worker's answer."""
    phones = tg.runtime.phone_peers
    key = (tg.account.id, phone)
    if (known := phones.get(key)) is not None:  # resolved before: no network call
        phones.move_to_end(key)
        return known
    found = await tg.call(
        "contacts.resolvePhone", lambda: tg.client(ResolvePhoneRequest(phone.lstrip("+")))
    )
    user_id = getattr(found.peer, "user_id", None)
    user = next((u for u in found.users if u.id == user_id), None)
    if user is None:
        raise PermanentFailure("phone_not_occupied", "No user has this phone number.")
    phones[key] = user
    if len(phones) > PHONE_PEERS_MAX:
        phones.popitem(last=False)
    return user


async def input_peer(tg: AccountSession, peer: str) -> Any:
    """The InputPeer of a normalised peer (``shared.jobs.telegram.normalize_peer``)."""
    if peer == "me":  # Saved Messages: nothing to resolve
        return types.InputPeerSelf()
    if peer.startswith("+"):
        return utils.get_input_peer(await _user_by_phone(tg, peer))
    if (invite := invite_hash(peer)) is not None:
        known = tg.client.known_peer(peer)
        return known if known is not None else utils.get_input_peer(await invited(tg, invite))
    method, value = _lookup(peer)
    try:
        return await _find(tg, method, value)
    except PermanentFailure as failure:
        if failure.code != "peer_not_found" or not isinstance(value, int):
            raise
        if not tg.runtime.may_scan_dialogs(tg.account.id):
            raise
    # A numeric id this worker has not seen for the account (its client was made on
    # another worker, or before a restart): the account's chats are where it would be.
    try:
        await tg.call("messages.getDialogs", lambda: tg.client.get_dialogs(limit=DIALOGS_SCAN))
    except BaseException:
        tg.runtime.dialogs_not_scanned(tg.account.id)
        raise
    return await _find(tg, method, value)


async def _find(tg: AccountSession, method: str, value: Any) -> Any:
    """The InputPeer of ``value``: from what the client has seen, with no network call
    (so a flood wait on ``method`` holds no job whose peer is known), else asked of
    Telegram with ``method`` under its flood state."""
    if (known := tg.client.known_peer(value)) is not None:
        return known
    return await tg.call(method, lambda: tg.client.get_input_entity(value))


# A link Telethon's client turns into a mention (``[hi](@name)``, ``+phone``,
# ``tg://user?id=``), matched as its _parse_message_text does.
_MENTION_URL = re.compile(r"@|\+|tg://user\?id=(\d+)")
# What finding a mentioned user can fail with when there is no such user: the link is
# dropped and its text stays, as Telethon's client does.
NO_SUCH_USER = frozenset(
    {
        "username_not_occupied",
        "username_invalid",
        "peer_not_found",
        "peer_id_invalid",
        "user_id_invalid",
        "phone_not_occupied",
        "phone_number_invalid",
    }
)


async def parse_text(tg: AccountSession, text: str, mode: str | None) -> tuple[str, list[Any]]:
    """The text as sent and its entities. The markup is parsed as Telethon's client
    parses it, but without the network: each mention's user is then found like any
    peer (``input_peer``: cached, flood-gated, its errors mapped). A mention of no user
    (no such username, phone or id, or a chat) keeps its text and loses its link."""
    if mode is None:  # the text goes as written (Telethon's own default is markdown)
        return text, []
    try:
        sent, parsed = (markdown if mode == "markdown" else html).parse(text)
    except Exception as exc:  # the gateway refuses such markup; a requeue may not
        raise PermanentFailure(
            "markup_invalid", f"The text's markup cannot be parsed ({type(exc).__name__})."
        ) from None
    if not sent.strip():
        raise PermanentFailure("message_empty", "The text is empty once its markup is parsed.")
    entities: list[Any] = []
    for entity in parsed:
        if not entity.length:  # Telegram no longer takes empty entities
            continue
        url = entity.url if isinstance(entity, types.MessageEntityTextUrl) else ""
        if (found := _MENTION_URL.match(url)) is None:
            entities.append(entity)
        elif (user := await _mentioned(tg, found.group(1) or url)) is not None:
            entities.append(types.InputMessageEntityMentionName(entity.offset, entity.length, user))
    return sent, entities


async def _mentioned(tg: AccountSession, target: str) -> Any | None:
    """The InputUser a mention names, None when it names no user."""
    try:
        spelled = normalize_peer(target)
    except ValueError:  # names no peer at all
        return None
    try:
        peer = await input_peer(tg, spelled)
    except PermanentFailure as failure:
        if failure.code in NO_SUCH_USER:
            return None
        raise
    try:
        return utils.get_input_user(peer)
    except TypeError:  # a chat, not a user
        return None


def method_for(method: str, peer: Any) -> str:
    """The MTProto method Telethon sends for ``peer``: for a channel its ``channels.``
    twin (``messages.getMessages`` -> ``channels.getMessages``), so that flood state,
    metrics and spans name the method Telegram limited."""
    if isinstance(peer, types.InputPeerChannel):
        return "channels." + method.partition(".")[2]
    return method


def peer_key(tg: AccountSession, peer: Any) -> str:
    """One name per chat for the per-peer send budget, however the job spelled it: its
    marked id, the account's own for its Saved Messages (``me``, its @username or id)."""
    if isinstance(peer, types.InputPeerSelf):
        own = tg.account.tg_user_id
        return "me" if own is None else str(own)
    return str(utils.get_peer_id(peer))


# How far back in the chat a re-run looks for the message its earlier attempt sent, and
# how far the DC's clock may run behind this host's when comparing dates.
SENT_SCAN = 100
CLOCK_SKEW = timedelta(seconds=60)


async def send_message(ctx: JobContext, params: SendMessageParams) -> SendMessageResult:
    """Send with a random_id fixed by the job id: a re-run resends the same one, and
    Telegram answers with the message it already has instead of a second one, or
    refuses the resend (``RANDOM_ID_DUPLICATE``), in which case the chat is read for it."""
    random_id = random_id_for(ctx.job_id)
    ctx.annotate(random_id=random_id)
    async with ctx.state.telegram.session(ctx.tenant, params.account_id) as tg:
        peer = await input_peer(tg, params.peer)
        chat = peer_key(tg, peer)
        text, entities = await parse_text(tg, params.text, params.parse_mode)
        await tg.take_send_budget(chat, "messages.sendMessage", ctx.job_id)  # once ready
        request = SendMessageRequest(
            peer=peer,
            message=text,
            random_id=random_id,
            entities=entities or None,
            reply_to=types.InputReplyToMessage(params.reply_to) if params.reply_to else None,
            silent=params.silent or None,
            no_webpage=not params.link_preview or None,
        )

        async def send() -> Any:
            try:
                return await tg.client(request, flood_sleep_threshold=0)  # see send_once
            except errors.RandomIdDuplicateError:
                return None  # an earlier attempt of this job stored the message

        result = await send_once(ctx, tg, "messages.sendMessage", send, chat, random_id=random_id)
        if result is None:
            message_id, date = await _sent_before(ctx, tg, peer, text)
            return SendMessageResult(
                message_id=message_id, random_id=random_id, date=date, resend_refused=True
            )
    message_id, date = _sent_message(result, random_id)
    return SendMessageResult(message_id=message_id, random_id=random_id, date=date)


async def send_once(
    ctx: JobContext,
    tg: AccountSession,
    method: str,
    request: Callable[[], Awaitable[T]],
    peer: str,
    **details: Any,
) -> T:
    """The call that sends, run to its end once it has gone out, whatever cancel comes
    meanwhile (the API's, a shutdown's, the job's own timeout): the cancel waits for
    its answer, which the request timeout bounds. Sent: the outcome stands (a message
    that exists is never reported as not sent). Refused by Telegram: the cancel takes
    effect. No answer (a timeout, a lost connection): the cancel takes effect, and a
    job so cancelled by the API says in its error's details (``maybe_sent`` and
    ``details``, the send's random ids) that the message may have been delivered.

    Only the request on the wire outlasts a cancel: the client connects before, where a
    cancel stops the job, and ``request`` must send with ``flood_sleep_threshold=0``, so
    that a flood wait defers the job (which a cancel then ends) instead of being slept
    through in here, with nothing sent."""
    await tg.connect()
    call = asyncio.ensure_future(tg.call(method, request, flood_checked=True, peer=peer))
    if not await outlast_cancellation(call):
        return call.result()
    failure = None if call.cancelled() else call.exception()
    if failure is None:
        return call.result()
    if not _refused(failure):
        ctx.in_doubt.update(maybe_sent=True, **details)
        log.warning("send cancelled with no answer; it may have been delivered", method=method)
    raise asyncio.CancelledError from failure


def _refused(failure: BaseException) -> bool:
    """Whether a failed call's request was answered with an error by Telegram, which
    then did not act on it (a server error or timeout may have acted first)."""
    cause = failure.__cause__
    return isinstance(cause, errors.RPCError) and not isinstance(cause, TRANSIENT)


async def _sent_before(
    ctx: JobContext, tg: AccountSession, peer: Any, text: str
) -> tuple[int | None, Any]:
    """The message an earlier attempt of this job sent, which Telegram refused to name
    on the resend. Telegram does not show a message's random_id, so it is found by its
    text: the one message this account sent to the chat with that text since the job
    was created (give or take the DCs' clock), among the chat's latest ``SENT_SCAN``.
    None when there is no such message or more than one (another job or person sent
    the same text meanwhile): naming a message that may not be this job's would be
    worse than naming none."""
    since = ctx.envelope.created_at - CLOCK_SKEW
    history = await tg.call(
        "messages.getHistory", lambda: tg.client.get_messages(peer, limit=SENT_SCAN)
    )
    mine = [
        m
        for m in history
        if isinstance(m, types.Message)
        and m.out
        and m.date >= since
        and m.message in (text, text.strip())
    ]
    if len(mine) != 1:
        log.warning("sent message not identified", candidates=len(mine))
        return None, None
    return mine[0].id, mine[0].date


def _sent_message(result: Any, random_id: int) -> tuple[int, Any]:
    if isinstance(result, types.UpdateShortSentMessage):
        return result.id, result.date
    updates = getattr(result, "updates", [])
    ids = [
        u.id for u in updates if isinstance(u, types.UpdateMessageID) and u.random_id == random_id
    ]
    messages = [u.message for u in updates if hasattr(u, "message") and hasattr(u.message, "id")]
    if ids:
        date = next((m.date for m in messages if m.id == ids[0]), None)
        return ids[0], date
    if messages:
        return messages[0].id, messages[0].date
    raise PermanentFailure("unexpected_response", f"Telegram answered {type(result).__name__}.")


async def get_history(ctx: JobContext, params: GetHistoryParams) -> MessagesResult:
    async with ctx.state.telegram.session(ctx.tenant, params.account_id) as tg:
        peer = await input_peer(tg, params.peer)
        messages = await tg.call(
            "messages.getHistory",
            lambda: tg.client.get_messages(
                peer, limit=params.limit, offset_id=params.offset_id, min_id=params.min_id
            ),
        )
        own = tg.account.tg_user_id
    return MessagesResult.model_validate(
        {"messages": [message_out(m, own) for m in messages if isinstance(m, MESSAGES)]}
    )


async def resolve(ctx: JobContext, params: PeerParams) -> ResolveResult:
    async with ctx.state.telegram.session(ctx.tenant, params.account_id) as tg:
        if params.peer == "me":  # the raw request, as in get_me
            users = await tg.call(
                "users.getUsers", lambda: tg.client(GetUsersRequest([types.InputUserSelf()]))
            )
            entity = users[0]
        elif params.peer.startswith("+"):
            entity = await _user_by_phone(tg, params.peer)
        elif (invite := invite_hash(params.peer)) is not None:
            entity = await invited(tg, invite)
        else:
            method, value = _lookup(params.peer)
            if isinstance(value, int):  # a numeric id: found as any job's peer is first
                value = await input_peer(tg, params.peer)
            entity = await tg.call(method, lambda: tg.client.get_entity(value))
    return ResolveResult(peer=peer_out(entity))


def peer_out(entity: Any) -> PeerOut:
    """A user or chat as results show it, ``id`` spelled as jobs take a peer and as
    messages' ``sender_id`` is: the marked id (``-100...`` a channel, ``-...`` a basic
    group)."""
    if isinstance(entity, types.User):
        kind = "user"
    else:  # a basic group (Chat, ChatForbidden), a Channel or ChannelForbidden
        channel = isinstance(entity, types.Channel | types.ChannelForbidden)
        kind = _chat_kind(channel, channel and bool(entity.broadcast))
    return PeerOut(
        id=utils.get_peer_id(entity),
        kind=kind,
        username=getattr(entity, "username", None),
        title=utils.get_display_name(entity) or None,
    )
