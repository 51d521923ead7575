"""Message effects on the world: send, forward, read, with random_id dedupe."""

from dataclasses import dataclass, replace
from typing import Any

from telethon.tl import types

from .errors import RpcFail, bad_request, forbidden
from .render import channel_tl, message_entities, message_tl, reply_header
from .state import Account, Channel, FwdInfo, PeerRef, SentRef, StoredMessage, World, now

MAX_TEXT = 4096  # UTF-16 code units, as Telegram counts them


@dataclass(frozen=True)
class Draft:
    """What a sender asks for: text and its formatting, reply, flags, forward origin."""

    text: str
    entities: tuple[Any, ...] = ()
    reply_to: int | None = None
    silent: bool = False
    fwd: FwdInfo | None = None


@dataclass(frozen=True)
class Sent:
    """A stored message (sender's view), its pts, and whether it was a resend."""

    message: StoredMessage
    pts: int
    duplicate: bool = False


def lookup(world: World, owner: Account, peer: PeerRef, msg_id: int) -> StoredMessage | None:
    """A message by id in a private box (owner's) or in a channel."""
    if peer.kind == "channel":
        channel = world.channels.get(peer.id)
        return channel.messages.get(msg_id) if channel else None
    message = owner.box.get(msg_id)
    return message if message is not None and message.peer == peer else None


def channel_for(world: World, account: Account, peer: PeerRef, *, write: bool) -> Channel:
    channel = world.channels.get(peer.id)
    if channel is None:
        raise bad_request("CHANNEL_INVALID")
    if write and account.id not in channel.members:
        raise forbidden("CHAT_WRITE_FORBIDDEN")
    if write and not channel.megagroup and account.id != channel.creator_id:
        raise forbidden("CHAT_WRITE_FORBIDDEN")
    return channel


def _check_text(draft: Draft) -> None:
    if not draft.text and draft.fwd is None:
        raise bad_request("MESSAGE_EMPTY")
    if len(draft.text.encode("utf-16-le")) // 2 > MAX_TEXT:
        raise bad_request("MESSAGE_TOO_LONG")


def sent_before(world: World, sender: Account, random_id: int) -> bool:
    """Whether the sender's message of this random_id is still there."""
    ref = sender.sent.get(random_id)
    return ref is not None and lookup(world, sender, ref.peer, ref.msg_id) is not None


def send(world: World, sender: Account, peer: PeerRef, draft: Draft, random_id: int | None) -> Sent:
    """Store a new message, or return the original one for a repeated random_id."""
    if random_id is not None and random_id in sender.sent:
        ref = sender.sent[random_id]
        original = lookup(world, sender, ref.peer, ref.msg_id)
        if original is not None:
            return Sent(original, ref.pts, duplicate=True)
    _check_text(draft)
    if peer.kind == "channel":
        sent = _send_channel(world, sender, peer, draft, random_id)
    else:
        sent = _send_private(world, sender, peer, draft, random_id)
    if random_id is not None:
        sender.sent[random_id] = SentRef(peer, sent.message.id, sent.pts)
    return sent


def _stored(
    draft: Draft,
    msg_id: int,
    peer: PeerRef,
    sender: Account,
    random_id: int | None,
    reply_to: int | None,
    *,
    out: bool = False,
    post: bool = False,
) -> StoredMessage:
    return StoredMessage(
        msg_id,
        peer,
        sender.id,
        out,
        draft.text,
        now(),
        random_id,
        draft.fwd,
        post=post,
        reply_to=reply_to,
        entities=draft.entities,
        silent=draft.silent,
    )


def _send_private(
    world: World, sender: Account, peer: PeerRef, draft: Draft, random_id: int | None
) -> Sent:
    target = world.accounts.get(peer.id)
    if target is None:
        raise bad_request("PEER_ID_INVALID")
    if target.banned:
        raise bad_request("USER_IS_BLOCKED")
    # A reply to a message missing from this chat goes out without its header.
    replied = lookup(world, sender, peer, draft.reply_to) if draft.reply_to else None
    reply_to = replied.id if replied is not None else None
    mine = _stored(draft, sender.next_id(), peer, sender, random_id, reply_to, out=True)
    pts = sender.store(mine)
    if target.id != sender.id:
        theirs = replace(
            mine,
            id=target.next_id(),
            peer=sender.peer,
            out=False,
            random_id=None,
            reply_to=replied.twin_id if replied is not None else None,
            twin_id=mine.id,
        )
        mine.twin_id = theirs.id
        their_pts = target.store(theirs)
        _push_private(world, target, theirs, their_pts)
    return Sent(mine, pts)


def _push_private(world: World, target: Account, message: StoredMessage, pts: int) -> None:
    if world.push is None:
        return

    def make(viewer: int) -> Any:
        if message.fwd is None:
            return types.UpdateShortMessage(
                id=message.id,
                user_id=message.peer.id,
                message=message.text,
                pts=pts,
                pts_count=1,
                date=message.date,
                silent=message.silent or None,
                reply_to=reply_header(message),
                entities=list(message.entities) or None,
            )
        users, chats = message_entities(world, viewer, [message])
        inner = types.UpdateNewMessage(message=message_tl(viewer, message), pts=pts, pts_count=1)
        return types.Updates(updates=[inner], users=users, chats=chats, date=now(), seq=0)

    world.push([target.id], make)


def _send_channel(
    world: World, sender: Account, peer: PeerRef, draft: Draft, random_id: int | None
) -> Sent:
    channel = channel_for(world, sender, peer, write=True)
    channel.last_msg_id += 1
    # Ids are shared in a channel, so a reply keeps the id if that message exists.
    reply_to = draft.reply_to if draft.reply_to in channel.messages else None
    message = _stored(
        draft, channel.last_msg_id, peer, sender, random_id, reply_to, post=not channel.megagroup
    )
    pts = channel.append(message)
    if world.push is not None:
        others = [m for m in channel.members if m != sender.id]
        world.push(others, lambda viewer: channel_updates(world, viewer, channel, message, pts))
    return Sent(message, pts)


def channel_updates(
    world: World,
    viewer_id: int,
    channel: Channel,
    message: StoredMessage,
    pts: int,
    random_id: int | None = None,
) -> Any:
    """The Updates a channel message produces for one member."""
    users, _ = message_entities(world, viewer_id, [message])
    inner: list[Any] = []
    if random_id is not None:
        inner.append(types.UpdateMessageID(id=message.id, random_id=random_id))
    inner.append(
        types.UpdateNewChannelMessage(message=message_tl(viewer_id, message), pts=pts, pts_count=1)
    )
    return types.Updates(
        updates=inner, users=users, chats=[channel_tl(viewer_id, channel)], date=now(), seq=0
    )


def forward_source(message: StoredMessage) -> FwdInfo:
    """The forward header a copy of ``message`` carries (originals are kept)."""
    if message.fwd is not None:
        return message.fwd
    if message.post:
        return FwdInfo(message.date, message.peer, channel_post=message.id)
    sender = message.from_id if message.from_id is not None else message.peer.id
    return FwdInfo(message.date, PeerRef("user", sender))


def read_history(world: World, account: Account, peer: PeerRef, max_id: int) -> int:
    """Mark incoming messages up to max_id read; returns the new pts (0 for channels)."""
    top = max_id or _top_id(world, account, peer)
    account.read_inbox[peer] = max(account.read_inbox.get(peer, 0), top)
    if peer.kind == "channel":
        return 0
    return account.bump(read=(peer, top))


def _top_id(world: World, account: Account, peer: PeerRef) -> int:
    if peer.kind == "channel":
        channel = world.channels.get(peer.id)
        return channel.last_msg_id if channel else 0
    ids = account.by_peer.get(peer, [])
    return ids[-1] if ids else 0


def fail_if_empty(ids: list[int]) -> None:
    if not ids:
        raise RpcFail(400, "MESSAGE_IDS_EMPTY")


def short_sent(sent: Sent) -> Any:
    """The compact answer Telegram gives to a private sendMessage."""
    return types.UpdateShortSentMessage(
        id=sent.message.id,
        pts=sent.pts,
        pts_count=1,
        date=sent.message.date,
        out=True,
        entities=list(sent.message.entities) or None,
    )


def private_updates(world: World, account: Account, sent: list[tuple[Sent, int]]) -> Any:
    """Updates for messages stored in a private box (forwards)."""
    inner: list[Any] = []
    for item, random_id in sent:
        inner.append(types.UpdateMessageID(id=item.message.id, random_id=random_id))
        inner.append(
            types.UpdateNewMessage(
                message=message_tl(account.id, item.message), pts=item.pts, pts_count=1
            )
        )
    users, chats = message_entities(world, account.id, [s.message for s, _ in sent])
    return types.Updates(updates=inner, users=users, chats=chats, date=now(), seq=0)
