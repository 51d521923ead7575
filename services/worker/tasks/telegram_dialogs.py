"""telegram.get_dialogs: the account's chat list, main or archived, page by page."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeAlias

import orjson
from telethon import types, utils
from telethon.tl.functions.messages import GetDialogsRequest, GetPinnedDialogsRequest

from services.worker.context import JobContext
from services.worker.tasks.telegram import peer_out
from services.worker.telegram.runtime import AccountSession
from shared.errors import Deferral, PermanentFailure, RetryableFailure
from shared.jobs.contract import ParamsRejected
from shared.jobs.dialog_cursor import DialogCursor, PeerKind
from shared.jobs.telegram import DialogOut, DialogsParams, DialogsResult


def _input_peer(cursor: DialogCursor) -> Any:
    """The offset peer as Telegram takes it, built from the cursor alone: the client
    sending it need not have seen the chat."""
    if cursor.kind is PeerKind.USER:
        return types.InputPeerUser(cursor.peer_id, cursor.access_hash)
    if cursor.kind is PeerKind.CHANNEL:
        return types.InputPeerChannel(cursor.peer_id, cursor.access_hash)
    if cursor.kind is PeerKind.CHAT:
        return types.InputPeerChat(cursor.peer_id)
    return types.InputPeerEmpty()


_Request: TypeAlias = GetDialogsRequest | GetPinnedDialogsRequest


def _request(cursor: DialogCursor | None, folder: int, limit: int) -> _Request:
    """The first page (pinned dialogs first), the folder's pinned dialogs when the
    pages so far listed only some of them (no offset reaches into them: they are in
    pin order, not by date), or the page after ``cursor`` (past the pinned dialogs)."""
    if cursor is None:
        return GetDialogsRequest(None, 0, types.InputPeerEmpty(), limit, 0, folder_id=folder)
    if cursor.kind is PeerKind.PINNED:
        return GetPinnedDialogsRequest(folder)
    return GetDialogsRequest(
        datetime.fromtimestamp(cursor.date, UTC) if cursor.date else None,
        cursor.message_id,
        _input_peer(cursor),
        limit,
        0,
        exclude_pinned=True,
        folder_id=folder,
    )


def _message_key(peer: Any, message_id: int) -> tuple[int | None, int]:
    """A top message's key among a page's messages: ids are the account's own outside
    channels, and each channel's inside it."""
    return getattr(peer, "channel_id", None), message_id


def _date(message: Any) -> int:
    return int(message.date.timestamp()) if getattr(message, "date", None) else 0


def _cursor_at(folder: int, entity: Any, message: Any) -> DialogCursor:
    """The cursor past a dialog: its top message's date and id, and its chat."""
    date = _date(message)
    if isinstance(entity, types.User):
        kind, access_hash = PeerKind.USER, entity.access_hash or 0
    elif isinstance(entity, types.Channel | types.ChannelForbidden):
        kind, access_hash = PeerKind.CHANNEL, entity.access_hash or 0
    else:
        kind, access_hash = PeerKind.CHAT, 0
    return DialogCursor(folder, date, message.id, kind, entity.id, access_hash)


def _seen_key(cursor: DialogCursor) -> int | None:
    """The marked id of the chat the cursor is past, None for none."""
    if cursor.kind in (PeerKind.NONE, PeerKind.PINNED):
        return None
    marked: int = utils.get_peer_id(_input_peer(cursor))
    return marked


def _sender(tg: AccountSession, request: _Request) -> Callable[[], Awaitable[Any]]:
    """One request as the callable ``AccountSession.call`` runs (bound now, not later)."""
    return lambda: tg.client(request)


@dataclass
class _Listing:
    """What the pages read so far hold, and where the next one starts."""

    folder: int
    cursor: DialogCursor | None
    dialogs: list[DialogOut] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)

    def read(self, page: Any, want: int) -> bool:
        """Take one answer to ``_request`` in; whether the list may go on after it."""
        if isinstance(page, types.messages.PeerDialogs):
            self._read_pinned(page, want)
            return True  # the dialogs not pinned come next, if any
        count, moved = self._read_page(page)
        # A short or complete answer is the list's end; so is one that did not move the
        # cursor (it would only be asked for again).
        return count >= want and isinstance(page, types.messages.DialogsSlice) and moved

    def _read_pinned(self, page: Any, want: int) -> None:
        """The folder's pinned dialogs after the ``listed`` ones the cursor counts."""
        assert self.cursor is not None
        listed = self.cursor.message_id
        taken = page.dialogs[listed : listed + want]
        self._take(page, taken)
        listed += len(taken)
        if listed < len(page.dialogs):
            self.cursor = DialogCursor.pinned(self.folder, listed)
        else:
            self.cursor = DialogCursor(self.folder)  # past them all

    def _read_page(self, page: Any) -> tuple[int, bool]:
        """Take a messages.getDialogs answer in: the number of dialogs it held, and
        whether it moved the cursor (past its last dialog not pinned; within the pinned
        ones if the first page held only those)."""
        last = self._take(page, page.dialogs)
        pinned_only = bool(page.dialogs) and all(getattr(d, "pinned", False) for d in page.dialogs)
        if last is None and self.cursor is None and pinned_only:
            last = DialogCursor.pinned(self.folder, len(page.dialogs))
        moved = last is not None and last != self.cursor
        if last is not None:
            self.cursor = last
        return len(page.dialogs), moved

    def _take(self, page: Any, dialogs: list[Any]) -> DialogCursor | None:
        """List ``dialogs`` of ``page``; the cursor past the last one not pinned. A chat
        listed already (Telegram may repeat one, or the one the cursor is past) and one
        newer than the offset (which Telegram may ignore) are left out; so is the
        archive's entry in the main list, no chat of its own."""
        entities = {
            utils.get_peer_id(x): x
            for x in itertools.chain(page.users, page.chats)
            if not isinstance(x, types.UserEmpty | types.ChatEmpty)
        }
        messages = {_message_key(m.peer_id, m.id): m for m in page.messages}
        after = self.cursor.date if self.cursor is not None else 0
        last: DialogCursor | None = None
        for dialog in dialogs:
            if not isinstance(dialog, types.Dialog):
                continue
            peer_id = utils.get_peer_id(dialog.peer)
            message = messages.get(_message_key(dialog.peer, dialog.top_message))
            entity = entities.get(peer_id)
            if not dialog.pinned and entity is not None and message is not None:
                last = _cursor_at(self.folder, entity, message)
            newer = after and message is not None and _date(message) > after
            if peer_id in self.seen or entity is None or newer:
                continue
            self.seen.add(peer_id)
            self.dialogs.append(
                DialogOut(
                    peer=peer_out(entity),
                    unread_count=dialog.unread_count,
                    last_message_id=dialog.top_message or None,
                    pinned=bool(dialog.pinned),
                )
            )
        return last


async def get_dialogs(ctx: JobContext, params: DialogsParams) -> DialogsResult:
    """Up to ``limit`` chats, one request per page, reporting progress after each.

    Each page goes on from the last one's cursor, ``offset`` for the first: that is the
    cursor ``next_offset`` hands back, so a listing split over several jobs reads what
    one job would. A page that must wait (a flood wait, a lost connection) or fails for
    now, once some were fetched, ends the job with those and ``cut_short`` naming why,
    as ``get_participants`` does."""
    folder = 1 if params.archived else 0
    try:  # the gateway checked it with the same key, unless the secret changed since
        start = params.start(ctx.state.settings)
    except ParamsRejected as exc:
        raise PermanentFailure(exc.kind, exc.message) from None
    listing = _Listing(folder, start)
    if start is not None and (past := _seen_key(start)) is not None:
        listing.seen.add(past)
    ended = False
    cut_short = None
    async with ctx.state.telegram.session(ctx.tenant, params.account_id) as tg:
        for page_number in itertools.count(1):
            want = min(params.page_size, params.limit - len(listing.dialogs))
            request = _request(listing.cursor, folder, want)
            method = (
                "messages.getPinnedDialogs"
                if isinstance(request, GetPinnedDialogsRequest)
                else "messages.getDialogs"
            )
            try:
                page = await tg.call(method, _sender(tg, request))
            except (Deferral, RetryableFailure) as stopped:
                if page_number == 1:
                    raise
                cut_short = stopped.code
                break
            ended = not listing.read(page, want)
            await ctx.report(
                progress=orjson.dumps(
                    {"pages": page_number, "fetched": len(listing.dialogs)}
                ).decode()
            )
            if ended or len(listing.dialogs) >= params.limit:
                break
    cursor = listing.cursor
    return DialogsResult(
        dialogs=listing.dialogs,
        next_offset=None
        if ended or cursor is None
        else cursor.encode(ctx.state.settings.dialog_cursor_key(), params.account_id),
        cut_short=cut_short,
    )
