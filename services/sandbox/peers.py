"""Resolve the client's Input* peers to world objects, checking access hashes."""

from typing import Any

from telethon.tl import types

from .errors import bad_request
from .state import Account, Channel, PeerRef, World


def _user(world: World, user_id: int, access_hash: int | None, error: str) -> PeerRef:
    account = world.accounts.get(user_id)
    if account is None or (access_hash is not None and access_hash != account.access_hash):
        raise bad_request(error)
    return account.peer


def _channel(world: World, channel_id: int, access_hash: int | None, error: str) -> PeerRef:
    channel = world.channels.get(channel_id)
    if channel is None or (access_hash is not None and access_hash != channel.access_hash):
        raise bad_request(error)
    return channel.peer


def input_peer(world: World, me: Account, peer: Any) -> PeerRef:
    """An InputPeer* as a PeerRef (PEER_ID_INVALID / CHANNEL_INVALID otherwise)."""
    if isinstance(peer, types.InputPeerSelf):
        return me.peer
    if isinstance(peer, types.InputPeerUser):
        return _user(world, peer.user_id, peer.access_hash, "PEER_ID_INVALID")
    if isinstance(peer, types.InputPeerChannel):
        return _channel(world, peer.channel_id, peer.access_hash, "CHANNEL_INVALID")
    if isinstance(peer, types.InputPeerUserFromMessage):
        return _user(world, peer.user_id, None, "PEER_ID_INVALID")
    if isinstance(peer, types.InputPeerChannelFromMessage):
        return _channel(world, peer.channel_id, None, "CHANNEL_INVALID")
    raise bad_request("PEER_ID_INVALID")


def input_user(world: World, me: Account, user: Any) -> Account:
    """An InputUser* as an account (USER_ID_INVALID otherwise)."""
    if isinstance(user, types.InputUserSelf):
        return me
    if isinstance(user, types.InputUser):
        peer = _user(world, user.user_id, user.access_hash, "USER_ID_INVALID")
    elif isinstance(user, types.InputUserFromMessage):
        peer = _user(world, user.user_id, None, "USER_ID_INVALID")
    else:
        raise bad_request("USER_ID_INVALID")
    return world.accounts[peer.id]


def input_channel(world: World, channel: Any) -> Channel:
    """An InputChannel* (or InputPeerChannel) as a channel (CHANNEL_INVALID otherwise)."""
    if isinstance(channel, types.InputChannel | types.InputPeerChannel):
        peer = _channel(world, channel.channel_id, channel.access_hash, "CHANNEL_INVALID")
    elif isinstance(channel, types.InputChannelFromMessage | types.InputPeerChannelFromMessage):
        peer = _channel(world, channel.channel_id, None, "CHANNEL_INVALID")
    else:
        raise bad_request("CHANNEL_INVALID")
    return world.channels[peer.id]
