"""Read-only views over the world: history pages, dialogs, differences."""

from dataclasses import dataclass
from typing import Any

from telethon.tl import types

from .render import message_entities, message_tl, peer_tl
from .state import Account, Channel, PeerRef, StoredMessage, World, now

MAX_PAGE = 100


@dataclass(frozen=True)
class HistoryQuery:
    offset_id: int = 0
    offset_date: int = 0
    add_offset: int = 0
    limit: int = 20
    max_id: int = 0
    min_id: int = 0


def dialog_messages(world: World, account: Account, peer: PeerRef) -> list[StoredMessage]:
    """All messages of one dialog, oldest first."""
    if peer.kind == "channel":
        channel = world.channels.get(peer.id)
        return list(channel.messages.values()) if channel else []
    return [account.box[i] for i in account.by_peer.get(peer, [])]


def _start_index(newest_first: list[StoredMessage], q: HistoryQuery) -> int:
    for index, message in enumerate(newest_first):
        if q.offset_id and message.id < q.offset_id:
            return index
        if not q.offset_id and q.offset_date and message.date < q.offset_date:
            return index
    return len(newest_first) if (q.offset_id or q.offset_date) else 0


def history(messages: list[StoredMessage], q: HistoryQuery) -> list[StoredMessage]:
    """One page in Telegram's getHistory order (newest first)."""
    newest_first = messages[::-1]
    start = max(_start_index(newest_first, q) + q.add_offset, 0)
    limit = max(0, min(q.limit, MAX_PAGE))
    page = newest_first[start : start + limit]
    return [
        m for m in page if (not q.max_id or m.id < q.max_id) and (not q.min_id or m.id > q.min_id)
    ]


def messages_result(
    world: World,
    account: Account,
    page: list[StoredMessage],
    total: int,
    channel: Channel | None = None,
) -> Any:
    """messages.Messages / MessagesSlice / ChannelMessages for one page."""
    users, chats = message_entities(world, account.id, page)
    rendered = [message_tl(account.id, m) for m in page]
    if channel is not None:
        return types.messages.ChannelMessages(
            pts=channel.pts,
            count=total,
            messages=rendered,
            topics=[],
            chats=chats,
            users=users,
        )
    if total > len(page):
        return types.messages.MessagesSlice(
            count=total, messages=rendered, topics=[], chats=chats, users=users
        )
    return types.messages.Messages(messages=rendered, topics=[], chats=chats, users=users)


DialogKey = tuple[int, bool, int, int]


def dialog_key(date: int, peer: PeerRef | None, message_id: int) -> DialogKey:
    """Where a dialog whose top message is ``message_id`` of ``date`` sorts: by date,
    then by peer kind and message id, then by peer id, so that no two dialogs tie (a
    list paged by the last dialog's key neither skips nor repeats one)."""
    channel = peer is not None and peer.kind == "channel"
    return (date, channel, message_id, peer.id if peer is not None else 0)


def dialog_tops(world: World, account: Account, folder: int | None = None) -> list[StoredMessage]:
    """The top message of every dialog of ``folder`` (None: of both), most recent first."""
    tops: list[StoredMessage] = [account.box[ids[-1]] for ids in account.by_peer.values() if ids]
    for channel_id in account.channels:
        channel = world.channels.get(channel_id)
        if channel is not None and channel.last_msg_id in channel.messages:
            tops.append(channel.messages[channel.last_msg_id])
    if folder is not None:
        tops = [m for m in tops if (m.peer in account.archived) == (folder == 1)]
    tops.sort(key=lambda m: dialog_key(m.date, m.peer, m.id), reverse=True)
    return tops


def pinned_split(
    account: Account, tops: list[StoredMessage], folder: int | None
) -> tuple[list[StoredMessage], list[StoredMessage]]:
    """``tops`` (one folder's, most recent first) as its pinned dialogs in pin order
    and the others in their order."""
    by_peer = {m.peer: m for m in tops}
    pinned = [by_peer[p] for p in account.pinned_in(folder) if p in by_peer]
    chosen = {m.peer for m in pinned}
    return pinned, [m for m in tops if m.peer not in chosen]


def _unread(world: World, account: Account, top: StoredMessage) -> int:
    read = account.read_inbox.get(top.peer, 0)
    if top.peer.kind == "channel":
        channel = world.channels[top.peer.id]
        return sum(1 for m in channel.messages.values() if m.id > read and m.from_id != account.id)
    return sum(1 for i in account.by_peer.get(top.peer, []) if i > read and not account.box[i].out)


def dialog_tl(world: World, account: Account, top: StoredMessage) -> Any:
    channel = world.channels.get(top.peer.id) if top.peer.kind == "channel" else None
    return types.Dialog(
        peer=peer_tl(top.peer),
        top_message=top.id,
        read_inbox_max_id=account.read_inbox.get(top.peer, 0),
        read_outbox_max_id=0,
        unread_count=_unread(world, account, top),
        unread_mentions_count=0,
        unread_reactions_count=0,
        unread_poll_votes_count=0,
        notify_settings=types.PeerNotifySettings(),
        pts=channel.pts if channel else None,
        folder_id=1 if top.peer in account.archived else None,
        pinned=top.peer in account.pinned or None,
    )


def state_tl(account: Account) -> Any:
    return types.updates.State(pts=account.pts, qts=0, date=now(), seq=0, unread_count=0)


def difference(world: World, account: Account, pts: int) -> Any:
    """updates.getDifference from the account's pts log."""
    if pts == account.pts:
        return types.updates.DifferenceEmpty(date=now(), seq=0)
    log = account.log
    if pts > account.pts or not log or log[0].pts > pts + 1:
        return types.updates.DifferenceTooLong(pts=account.pts)
    new: list[StoredMessage] = []
    other: list[Any] = []
    for entry in log:
        if entry.pts <= pts:
            continue
        if entry.msg_id is not None and entry.msg_id in account.box:
            new.append(account.box[entry.msg_id])
        elif entry.read is not None:
            peer, max_id = entry.read
            other.append(
                types.UpdateReadHistoryInbox(
                    peer=peer_tl(peer),
                    max_id=max_id,
                    still_unread_count=0,
                    pts=entry.pts,
                    pts_count=1,
                )
            )
    users, chats = message_entities(world, account.id, new)
    return types.updates.Difference(
        new_messages=[message_tl(account.id, m) for m in new],
        new_encrypted_messages=[],
        other_updates=other,
        chats=chats,
        users=users,
        state=state_tl(account),
    )


def channel_difference(
    world: World, account: Account, channel: Channel, pts: int, limit: int
) -> Any:
    """updates.getChannelDifference from the channel's pts log."""
    entries = [(p, mid) for p, mid in channel.log if p > pts][: max(1, min(limit, MAX_PAGE))]
    if pts >= channel.pts or not entries:
        return types.updates.ChannelDifferenceEmpty(pts=channel.pts, final=True, timeout=30)
    messages = [channel.messages[mid] for _, mid in entries if mid in channel.messages]
    users, chats = message_entities(world, account.id, messages)
    new_pts = entries[-1][0]
    return types.updates.ChannelDifference(
        pts=new_pts,
        new_messages=[message_tl(account.id, m) for m in messages],
        other_updates=[],
        chats=chats,
        users=users,
        final=new_pts == channel.pts,
        timeout=30,
    )
