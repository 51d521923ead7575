"""channels.* : joining, members, and channel-scoped message reads."""

from typing import Any

from telethon.tl import functions, types

from services.sandbox import messaging, queries
from services.sandbox.errors import bad_request, forbidden
from services.sandbox.peers import input_channel
from services.sandbox.render import channel_tl, message_tl, user_tl
from services.sandbox.rpc import Call, method
from services.sandbox.state import Account, Channel, World, now


def _empty(msg_id: int) -> Any:
    return types.MessageEmpty(id=msg_id, peer_id=None)


def join_result(world: World, me: Account, channel: Channel) -> Any:
    """The Updates Telegram answers a join with."""
    return types.Updates(
        updates=[types.UpdateChannel(channel_id=channel.id)],
        users=[],
        chats=[channel_tl(me.id, channel)],
        date=now(),
        seq=0,
    )


@method(functions.channels.JoinChannelRequest)
def join_channel(call: Call, req: Any) -> Any:
    world = call.core.world
    me = call.account
    channel = input_channel(world, req.channel)
    if not world.join(me, channel):
        return types.Updates(
            updates=[], users=[], chats=[channel_tl(me.id, channel)], date=now(), seq=0
        )
    return join_result(world, me, channel)


@method(functions.channels.LeaveChannelRequest)
def leave_channel(call: Call, req: Any) -> Any:
    world = call.core.world
    me = call.account
    channel = input_channel(world, req.channel)
    if channel.members.pop(me.id, None) is None:
        raise bad_request("USER_NOT_PARTICIPANT")
    me.channels.discard(channel.id)
    return join_result(world, me, channel)


def _participant(channel: Channel, me: Account, user_id: int) -> Any:
    date = channel.members[user_id]
    if user_id == channel.creator_id:
        rights = types.ChatAdminRights(
            change_info=True, post_messages=True, delete_messages=True, ban_users=True
        )
        return types.ChannelParticipantCreator(user_id=user_id, admin_rights=rights)
    if user_id == me.id:
        return types.ChannelParticipantSelf(
            user_id=user_id, inviter_id=channel.creator_id, date=date
        )
    return types.ChannelParticipant(user_id=user_id, date=date)


def _filtered(world: World, channel: Channel, flt: Any) -> list[int]:
    members = list(channel.members)
    if isinstance(flt, types.ChannelParticipantsAdmins):
        return [channel.creator_id] if channel.creator_id in channel.members else []
    if isinstance(flt, types.ChannelParticipantsSearch) and flt.q:
        q = flt.q.lower()
        return [
            u
            for u in members
            if q in f"{world.accounts[u].first_name} {world.accounts[u].last_name}".lower()
            or q in (world.accounts[u].username or "").lower()
        ]
    if isinstance(flt, types.ChannelParticipantsRecent | types.ChannelParticipantsSearch):
        return members
    return []


@method(functions.channels.GetParticipantsRequest)
def get_participants(call: Call, req: Any) -> Any:
    world = call.core.world
    me = call.account
    channel = input_channel(world, req.channel)
    if not channel.megagroup and me.id != channel.creator_id:
        raise forbidden("CHAT_ADMIN_REQUIRED")
    ids = _filtered(world, channel, req.filter)
    listed = ids[: call.core.settings.participants_listed]  # count still gives them all
    page = listed[max(req.offset, 0) : max(req.offset, 0) + max(0, min(req.limit, 200))]
    participants = [_participant(channel, me, u) for u in page]
    # As Telegram does, ``users`` holds every user the page mentions: the members, and
    # also whoever invited one (who need not be on this page, or a member at all).
    mentioned = dict.fromkeys(
        [*page, *(p.inviter_id for p in participants if getattr(p, "inviter_id", None))]
    )
    return types.channels.ChannelParticipants(
        count=len(ids),
        participants=participants,
        chats=[],
        users=[user_tl(me.id, world.accounts[u]) for u in mentioned if u in world.accounts],
    )


@method(functions.channels.GetMessagesRequest)
def get_messages(call: Call, req: Any) -> Any:
    world = call.core.world
    me = call.account
    channel = input_channel(world, req.channel)
    found = [channel.messages.get(getattr(i, "id", 0)) for i in req.id]
    present = [m for m in found if m is not None]
    result = queries.messages_result(world, me, present, len(present), channel)
    result.messages = [
        message_tl(me.id, m)
        if m is not None
        else types.MessageEmpty(id=getattr(i, "id", 0), peer_id=None)
        for m, i in zip(found, req.id, strict=True)
    ]
    return result


@method(functions.channels.GetChannelsRequest)
def get_channels(call: Call, req: Any) -> Any:
    world = call.core.world
    me = call.account
    return types.messages.Chats(chats=[channel_tl(me.id, input_channel(world, c)) for c in req.id])


@method(functions.channels.GetFullChannelRequest)
def get_full_channel(call: Call, req: Any) -> Any:
    world = call.core.world
    me = call.account
    channel = input_channel(world, req.channel)
    full = types.ChannelFull(
        id=channel.id,
        about="",
        read_inbox_max_id=me.read_inbox.get(channel.peer, 0),
        read_outbox_max_id=0,
        unread_count=0,
        chat_photo=types.PhotoEmpty(id=0),
        notify_settings=types.PeerNotifySettings(),
        bot_info=[],
        pts=channel.pts,
        participants_count=len(channel.members),
        can_view_participants=channel.megagroup or me.id == channel.creator_id or None,
    )
    users = [user_tl(me.id, me)]
    return types.messages.ChatFull(full_chat=full, chats=[channel_tl(me.id, channel)], users=users)


@method(functions.channels.ReadHistoryRequest)
def read_history(call: Call, req: Any) -> bool:
    world = call.core.world
    me = call.account
    channel = input_channel(world, req.channel)
    if me.id not in channel.members:
        raise bad_request("CHANNEL_PRIVATE")
    messaging.read_history(world, me, channel.peer, req.max_id)
    return True
