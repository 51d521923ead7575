"""Turn the in-memory world into Telethon TL objects, as seen by one viewer."""

from collections.abc import Iterable
from typing import Any

from telethon.tl import types

from .state import Account, Channel, PeerRef, StoredMessage, World


def peer_tl(peer: PeerRef) -> Any:
    if peer.kind == "user":
        return types.PeerUser(user_id=peer.id)
    return types.PeerChannel(channel_id=peer.id)


def user_tl(viewer_id: int, account: Account) -> Any:
    is_self = viewer_id == account.id
    return types.User(
        id=account.id,
        is_self=is_self,
        access_hash=account.access_hash,
        first_name=account.first_name,
        last_name=account.last_name or None,
        username=account.username,
        phone=account.phone if is_self else None,
        status=types.UserStatusRecently(),
        deleted=account.banned or None,
    )


def channel_tl(viewer_id: int, channel: Channel) -> Any:
    member = viewer_id in channel.members
    return types.Channel(
        id=channel.id,
        title=channel.title,
        photo=types.ChatPhotoEmpty(),
        date=channel.members.get(viewer_id, channel.date),
        access_hash=channel.access_hash,
        username=channel.username,
        creator=viewer_id == channel.creator_id or None,
        left=not member or None,
        broadcast=not channel.megagroup or None,
        megagroup=channel.megagroup or None,
        participants_count=len(channel.members),
    )


def _fwd_tl(message: StoredMessage) -> Any:
    if message.fwd is None:
        return None
    source = message.fwd.from_peer
    return types.MessageFwdHeader(
        date=message.fwd.date,
        from_id=peer_tl(source) if source else None,
        channel_post=message.fwd.channel_post,
    )


def reply_header(message: StoredMessage) -> Any:
    if message.reply_to is None:
        return None
    return types.MessageReplyHeader(reply_to_msg_id=message.reply_to)


def message_tl(viewer_id: int, message: StoredMessage) -> Any:
    """The message as ``viewer_id`` sees it (out flag, sender)."""
    in_channel = message.peer.kind == "channel"
    out = message.out or (in_channel and message.from_id == viewer_id)
    from_id = None
    if in_channel and not message.post and message.from_id is not None:
        from_id = types.PeerUser(user_id=message.from_id)
    if message.action == "channel_create":
        return types.MessageService(
            id=message.id,
            peer_id=peer_tl(message.peer),
            date=message.date,
            action=types.MessageActionChannelCreate(title=""),
            out=out or None,
            from_id=from_id,
            post=message.post or None,
        )
    return types.Message(
        id=message.id,
        peer_id=peer_tl(message.peer),
        date=message.date,
        message=message.text,
        out=out or None,
        from_id=from_id,
        post=message.post or None,
        fwd_from=_fwd_tl(message),
        silent=message.silent or None,
        reply_to=reply_header(message),
        entities=list(message.entities) or None,
    )


def entities(
    world: World, viewer_id: int, peers: Iterable[PeerRef], extra_users: Iterable[int] = ()
) -> tuple[list[Any], list[Any]]:
    """The users and chats lists that must accompany a result."""
    user_ids: dict[int, None] = dict.fromkeys(extra_users)
    channel_ids: dict[int, None] = {}
    for peer in peers:
        if peer.kind == "user":
            user_ids[peer.id] = None
        else:
            channel_ids[peer.id] = None
    users = [user_tl(viewer_id, world.accounts[u]) for u in user_ids if u in world.accounts]
    chats = [channel_tl(viewer_id, world.channels[c]) for c in channel_ids if c in world.channels]
    return users, chats


def message_entities(
    world: World, viewer_id: int, messages: Iterable[StoredMessage]
) -> tuple[list[Any], list[Any]]:
    peers: list[PeerRef] = []
    for m in messages:
        peers.append(m.peer)
        if m.from_id is not None:
            peers.append(PeerRef("user", m.from_id))
        if m.fwd is not None and m.fwd.from_peer is not None:
            peers.append(m.fwd.from_peer)
    return entities(world, viewer_id, peers, [viewer_id])
