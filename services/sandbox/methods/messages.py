"""messages.* : sending, forwarding, reading and listing messages."""

from typing import Any

from telethon.tl import functions, types

from services.sandbox import messaging, queries
from services.sandbox.errors import RpcFail, bad_request
from services.sandbox.formatting import stored_entities
from services.sandbox.peers import input_peer
from services.sandbox.render import channel_tl, message_tl
from services.sandbox.rpc import Call, method
from services.sandbox.state import Account, Channel, PeerRef, StoredMessage, World

from .channels import join_result


def epoch(value: Any) -> int:
    """A TL date as Unix seconds; absent dates arrive as the epoch itself."""
    return int(value.timestamp()) if value is not None else 0


def _channel_of(world: World, peer: PeerRef) -> Channel | None:
    return world.channels.get(peer.id) if peer.kind == "channel" else None


def _reply_id(reply_to: Any) -> int | None:
    """The replied-to id; other reply kinds (stories) are not kept."""
    if isinstance(reply_to, types.InputReplyToMessage):
        return int(reply_to.reply_to_msg_id)
    return None


@method(functions.messages.SendMessageRequest)
def send_message(call: Call, req: Any) -> Any:
    me = call.account
    world = call.core.world
    peer = input_peer(world, me, req.peer)
    draft = messaging.Draft(
        req.message,
        stored_entities(world, me, req.message, req.entities),
        reply_to=_reply_id(req.reply_to),
        silent=bool(req.silent),
    )
    sent = messaging.send(world, me, peer, draft, req.random_id)
    if sent.duplicate and call.core.settings.random_id_duplicate:
        raise RpcFail(500, "RANDOM_ID_DUPLICATE")
    channel = _channel_of(world, peer)
    if channel is None:
        return messaging.short_sent(sent)
    return messaging.channel_updates(
        world, me.id, channel, sent.message, sent.pts, random_id=req.random_id
    )


def _sources(world: World, me: Account, peer: PeerRef, ids: list[int]) -> list[StoredMessage]:
    found = [messaging.lookup(world, me, peer, i) for i in ids]
    if any(m is None for m in found):
        raise bad_request("MESSAGE_ID_INVALID")
    return [m for m in found if m is not None]


@method(functions.messages.ForwardMessagesRequest)
def forward_messages(call: Call, req: Any) -> Any:
    me = call.account
    world = call.core.world
    if not req.id:
        raise bad_request("MESSAGE_IDS_EMPTY")
    if len(req.id) != len(req.random_id):
        raise bad_request("RANDOM_ID_INVALID")
    source = input_peer(world, me, req.from_peer)
    target = input_peer(world, me, req.to_peer)
    if source.kind == "channel":
        messaging.channel_for(world, me, source, write=False)
    originals = _sources(world, me, source, req.id)
    if call.core.settings.random_id_duplicate and any(
        messaging.sent_before(world, me, rid) for rid in req.random_id
    ):
        raise RpcFail(500, "RANDOM_ID_DUPLICATE")
    drafts = [
        messaging.Draft(
            m.text, m.entities, silent=bool(req.silent), fwd=messaging.forward_source(m)
        )
        for m in originals
    ]
    sent = [
        (messaging.send(world, me, target, draft, rid), rid)
        for draft, rid in zip(drafts, req.random_id, strict=True)
    ]
    channel = _channel_of(world, target)
    if channel is None:
        return messaging.private_updates(world, me, sent)
    parts = [
        messaging.channel_updates(world, me.id, channel, s.message, s.pts, random_id=rid)
        for s, rid in sent
    ]
    merged = parts[0]
    for extra in parts[1:]:
        merged.updates.extend(extra.updates)
    return merged


@method(functions.messages.GetHistoryRequest)
def get_history(call: Call, req: Any) -> Any:
    me = call.account
    world = call.core.world
    peer = input_peer(world, me, req.peer)
    query = queries.HistoryQuery(
        offset_id=req.offset_id,
        offset_date=epoch(req.offset_date),
        add_offset=req.add_offset,
        limit=req.limit,
        max_id=req.max_id,
        min_id=req.min_id,
    )
    every = queries.dialog_messages(world, me, peer)
    page = queries.history(every, query)
    return queries.messages_result(world, me, page, len(every), _channel_of(world, peer))


def _by_ids(me: Account, items: list[Any]) -> list[Any]:
    rendered: list[Any] = []
    for item in items:
        msg_id = getattr(item, "id", 0)
        message = me.box.get(msg_id) if isinstance(item, types.InputMessageID) else None
        rendered.append(
            message_tl(me.id, message)
            if message is not None
            else types.MessageEmpty(id=msg_id, peer_id=None)
        )
    return rendered


@method(functions.messages.GetMessagesRequest)
def get_messages(call: Call, req: Any) -> Any:
    me = call.account
    world = call.core.world
    rendered = _by_ids(me, req.id)
    found = [me.box[m.id] for m in rendered if isinstance(m, types.Message | types.MessageService)]
    result = queries.messages_result(world, me, found, len(found))
    result.messages = rendered
    return result


def _dialog_folder(req: Any) -> int | None:
    """The folder asked for: 0 the main list, 1 the archive, None (not set) both."""
    if req.folder_id not in (None, 0, 1):
        raise bad_request("FOLDER_ID_INVALID")
    folder: int | None = req.folder_id
    return folder


def _dialog_page(world: World, me: Account, req: Any) -> tuple[list[StoredMessage], int]:
    """One page of the folder's dialogs and how many the request could list: the pinned
    ones first unless ``exclude_pinned`` (on every page: the offset does not apply to
    them), then the others after the offset (the last dialog of the page before: its
    top message's date and id and its peer)."""
    folder = _dialog_folder(req)
    pinned, tops = queries.pinned_split(me, queries.dialog_tops(world, me, folder), folder)
    if req.exclude_pinned:
        pinned = []
    total = len(pinned) + len(tops)
    offset_peer = req.offset_peer
    peer = None
    if not isinstance(offset_peer, types.InputPeerEmpty):
        peer = input_peer(world, me, offset_peer)
    date = epoch(req.offset_date)
    if peer is not None or date or req.offset_id:
        offset = queries.dialog_key(date, peer, req.offset_id)
        tops = [m for m in tops if queries.dialog_key(m.date, m.peer, m.id) < offset]
    limit = max(1, min(req.limit or 100, queries.MAX_PAGE))
    return (pinned + tops)[:limit], total


def _dialogs_of(world: World, me: Account, page: list[StoredMessage]) -> Any:
    """The page as messages.Dialogs: its dialogs with their top messages and peers."""
    result = queries.messages_result(world, me, page, len(page))
    return types.messages.Dialogs(
        dialogs=[queries.dialog_tl(world, me, m) for m in page],
        messages=result.messages,
        chats=result.chats,
        users=result.users,
    )


@method(functions.messages.GetDialogsRequest)
def get_dialogs(call: Call, req: Any) -> Any:
    me = call.account
    world = call.core.world
    page, total = _dialog_page(world, me, req)
    listed = _dialogs_of(world, me, page)
    if len(page) < total:
        return types.messages.DialogsSlice(
            count=total,
            dialogs=listed.dialogs,
            messages=listed.messages,
            chats=listed.chats,
            users=listed.users,
        )
    return listed


@method(functions.messages.GetPinnedDialogsRequest)
def get_pinned_dialogs(call: Call, req: Any) -> Any:
    me = call.account
    world = call.core.world
    if req.folder_id not in (0, 1):
        raise bad_request("FOLDER_ID_INVALID")
    pinned, _ = queries.pinned_split(
        me, queries.dialog_tops(world, me, req.folder_id), req.folder_id
    )
    listed = _dialogs_of(world, me, pinned)
    return types.messages.PeerDialogs(
        dialogs=listed.dialogs,
        messages=listed.messages,
        chats=listed.chats,
        users=listed.users,
        state=queries.state_tl(me),
    )


def _dialog_peer(world: World, me: Account, peer: Any) -> PeerRef:
    """An InputDialogPeer's chat; the archive's own entry is not pinned here."""
    if not isinstance(peer, types.InputDialogPeer):
        raise bad_request("PEER_ID_INVALID")
    return input_peer(world, me, peer.peer)


@method(functions.messages.ToggleDialogPinRequest)
def toggle_dialog_pin(call: Call, req: Any) -> Any:
    me = call.account
    me.pin_dialog(_dialog_peer(call.core.world, me, req.peer), bool(req.pinned))
    return True


@method(functions.messages.ReorderPinnedDialogsRequest)
def reorder_pinned_dialogs(call: Call, req: Any) -> Any:
    me = call.account
    if req.folder_id not in (0, 1):
        raise bad_request("FOLDER_ID_INVALID")
    order = [_dialog_peer(call.core.world, me, p) for p in req.order]
    me.reorder_pinned(req.folder_id, order, force=bool(req.force))
    return True


@method(functions.messages.ReadHistoryRequest)
def read_history(call: Call, req: Any) -> Any:
    me = call.account
    peer = input_peer(call.core.world, me, req.peer)
    if peer.kind != "user":
        raise bad_request("PEER_ID_INVALID")
    pts = messaging.read_history(call.core.world, me, peer, req.max_id)
    return types.messages.AffectedMessages(pts=pts, pts_count=1)


@method(functions.messages.ImportChatInviteRequest)
def import_chat_invite(call: Call, req: Any) -> Any:
    world = call.core.world
    channel_id = world.by_invite.get(req.hash)
    if channel_id is None:
        raise bad_request("INVITE_HASH_INVALID")
    me = call.account
    channel = world.channels[channel_id]
    if not world.join(me, channel):
        raise bad_request("USER_ALREADY_PARTICIPANT")
    return join_result(world, me, channel)


@method(functions.messages.CheckChatInviteRequest)
def check_chat_invite(call: Call, req: Any) -> Any:
    world = call.core.world
    me = call.account
    channel_id = world.by_invite.get(req.hash)
    if channel_id is None:
        raise bad_request("INVITE_HASH_INVALID")
    channel = world.channels[channel_id]
    if me.id in channel.members:
        return types.ChatInviteAlready(chat=channel_tl(me.id, channel))
    return types.ChatInvite(
        title=channel.title,
        photo=types.PhotoEmpty(id=0),
        participants_count=len(channel.members),
        color=0,
        channel=True,
        broadcast=not channel.megagroup or None,
        megagroup=channel.megagroup or None,
        public=channel.username is not None or None,
    )
