"""The rest of the Telegram catalogue: reads, joins, forwards and members."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from telethon import errors, types
from telethon.tl.functions.channels import GetParticipantsRequest, JoinChannelRequest
from telethon.tl.functions.messages import (
    CheckChatInviteRequest,
    ForwardMessagesRequest,
    ImportChatInviteRequest,
)

from services.worker.context import JobContext
from services.worker.tasks.telegram import (
    input_peer,
    method_for,
    peer_key,
    peer_out,
    send_once,
    user_out,
)
from services.worker.telegram.runtime import (
    MESSAGES,
    AccountSession,
    message_out,
    random_id_for,
)
from shared.errors import Deferral, PermanentFailure, RetryableFailure
from shared.jobs.telegram import (
    ForwardParams,
    ForwardResult,
    GetMessagesParams,
    JoinChatParams,
    MarkReadParams,
    MessagesResult,
    OkResult,
    ParticipantsParams,
    ParticipantsResult,
    ResolveResult,
    UserOut,
    invite_hash,
)


async def get_messages(ctx: JobContext, params: GetMessagesParams) -> MessagesResult:
    async with ctx.state.telegram.session(ctx.tenant, params.account_id) as tg:
        peer = await input_peer(tg, params.peer)
        found = await tg.call(
            method_for("messages.getMessages", peer),
            lambda: tg.client.get_messages(peer, ids=params.ids),
        )
        own = tg.account.tg_user_id
    return MessagesResult.model_validate(
        {"messages": [message_out(m, own) for m in found if isinstance(m, MESSAGES)]}
    )


async def join_chat(ctx: JobContext, params: JoinChatParams) -> ResolveResult:
    """Join, or find the account a member already: both succeed with the chat."""
    invite = invite_hash(params.target)
    async with ctx.state.telegram.session(ctx.tenant, params.account_id) as tg:
        if invite is None:
            channel = await input_peer(tg, params.target)
            updates = await tg.call(
                "channels.joinChannel", lambda: tg.client(JoinChannelRequest(channel))
            )
        else:
            updates = await tg.call("messages.importChatInvite", _importer(tg, invite))
            if updates is None:
                return ResolveResult(peer=peer_out(await _member_of(tg, invite)))
    chats = getattr(updates, "chats", [])
    if not chats:
        raise PermanentFailure("unexpected_response", "Joining returned no chat.")
    return ResolveResult(peer=peer_out(chats[0]))


def _importer(tg: AccountSession, invite: str) -> Callable[[], Awaitable[Any]]:
    """messages.importChatInvite, None when the account is in the chat already: joined
    before, or by this very request when Telethon resent it after a dropped connection."""

    async def join() -> Any:
        try:
            return await tg.client(ImportChatInviteRequest(invite))
        except errors.UserAlreadyParticipantError:
            return None

    return join


async def _member_of(tg: AccountSession, invite: str) -> Any:
    """The chat of an invite the account is a member of (Telegram names it then)."""
    found = await tg.call(
        "messages.checkChatInvite", lambda: tg.client(CheckChatInviteRequest(invite))
    )
    if not isinstance(found, types.ChatInviteAlready):
        raise PermanentFailure(
            "unexpected_response", "Telegram refused the join as a member's but did not agree."
        )
    return found.chat


async def forward_messages(ctx: JobContext, params: ForwardParams) -> ForwardResult:
    """One random_id per forwarded message, derived from the job id: re-runs repeat them."""
    random_ids = [random_id_for(f"{ctx.job_id}:{i}") for i in range(len(params.ids))]
    async with ctx.state.telegram.session(ctx.tenant, params.account_id) as tg:
        source = await input_peer(tg, params.from_peer)
        target = await input_peer(tg, params.to_peer)
        chat = peer_key(tg, target)
        await tg.take_send_budget(chat, "messages.forwardMessages", ctx.job_id)
        request = ForwardMessagesRequest(
            from_peer=source,
            id=params.ids,
            random_id=random_ids,
            to_peer=target,
            silent=params.silent or None,
        )

        async def forward() -> Any:
            try:
                return await tg.client(request, flood_sleep_threshold=0)  # see send_once
            except errors.RandomIdDuplicateError:
                return None  # an earlier attempt of this job forwarded them

        method = "messages.forwardMessages"
        updates = await send_once(ctx, tg, method, forward, chat, random_ids=random_ids)
    if updates is None:
        return ForwardResult(message_ids=[], resend_refused=True)
    by_random = {
        u.random_id: u.id
        for u in getattr(updates, "updates", [])
        if isinstance(u, types.UpdateMessageID)
    }
    return ForwardResult(message_ids=[by_random[r] for r in random_ids if r in by_random])


async def mark_read(ctx: JobContext, params: MarkReadParams) -> OkResult:
    async with ctx.state.telegram.session(ctx.tenant, params.account_id) as tg:
        peer = await input_peer(tg, params.peer)
        done = await tg.call(
            method_for("messages.readHistory", peer),
            lambda: tg.client.send_read_acknowledge(peer, max_id=params.max_id or None),
        )
    return OkResult(ok=bool(done))


def _sender(tg: Any, request: Any) -> Any:
    """One request as the callable ``AccountSession.call`` runs (bound now, not later)."""
    return lambda: tg.client(request)


def _member_id(participant: Any) -> int | None:
    """The user a participant entry is about (banned and left ones name a peer)."""
    user_id = getattr(participant, "user_id", None)
    if user_id is None and isinstance(getattr(participant, "peer", None), types.PeerUser):
        user_id = participant.peer.user_id
    return user_id if isinstance(user_id, int) else None


async def get_participants(ctx: JobContext, params: ParticipantsParams) -> ParticipantsResult:
    """Up to ``limit`` members, one request per page, reporting progress after each.

    An empty page ends the listing, whatever ``count`` says: Telegram lists at most
    10,000 of a chat's members but counts them all, so an offset past what it lists
    would otherwise be handed back as ``next_offset`` for ever. A page that must wait
    (a flood wait, a lost connection) or fails for now, once some were fetched, ends
    the job with those and ``cut_short`` naming why: a re-run would fetch them again
    (and a big chat's listing with recurring floods might never end)."""
    users: list[UserOut] = []
    total = 0
    offset = params.offset
    ended = False
    cut_short = None
    async with ctx.state.telegram.session(ctx.tenant, params.account_id) as tg:
        channel = await input_peer(tg, params.peer)
        for page_number in itertools.count(1):
            want = min(params.page_size, params.limit - len(users))
            request = GetParticipantsRequest(
                channel, types.ChannelParticipantsSearch(params.search), offset, want, hash=0
            )
            try:
                page = await tg.call("channels.getParticipants", _sender(tg, request))
            except (Deferral, RetryableFailure) as stopped:
                if page_number == 1:
                    raise
                cut_short = stopped.code
                break
            # ``participants`` is the page; ``users`` also holds whoever those entries
            # mention (inviters, promoters, banners), members or not.
            members = getattr(page, "participants", [])
            known = {u.id: u for u in getattr(page, "users", [])}
            fetched = [user_out(known[i]) for i in map(_member_id, members) if i in known]
            users += fetched
            offset += len(members)
            total = int(getattr(page, "count", offset))
            await ctx.report(
                progress=orjson.dumps(
                    {"pages": page_number, "fetched": len(users), "total": total}
                ).decode()
            )
            ended = not members or offset >= total
            if ended or len(users) >= params.limit:
                break
    return ParticipantsResult(
        participants=users,
        total=total,
        next_offset=None if ended else offset,
        cut_short=cut_short,
    )
