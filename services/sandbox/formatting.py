"""Message entities as the server keeps them: in range, sorted, mentions resolved."""

import copy
from collections.abc import Iterable
from typing import Any

from telethon.tl import types

from .errors import RpcFail
from .peers import input_peer, input_user
from .state import Account, World


def utf16_len(text: str) -> int:
    """Entity offsets and lengths count UTF-16 code units, not code points."""
    return len(text.encode("utf-16-le")) // 2


_PEER_USERS = types.InputPeerUser | types.InputPeerSelf | types.InputPeerUserFromMessage


def _mention(world: World, me: Account, entity: Any) -> Any | None:
    try:
        if isinstance(entity.user_id, _PEER_USERS):
            # Telethon puts an InputPeer where the schema says InputUser; Telegram takes it.
            user_id = input_peer(world, me, entity.user_id).id
        else:
            user_id = input_user(world, me, entity.user_id).id
    except RpcFail:
        return None  # an unknown user leaves plain text, not a failed send
    return types.MessageEntityMentionName(
        offset=entity.offset, length=entity.length, user_id=user_id
    )


def stored_entities(
    world: World, me: Account, text: str, entities: Iterable[Any] | None
) -> tuple[Any, ...]:
    """Clip entities to the text, drop empty ones, and resolve input mentions."""
    size = utf16_len(text)
    kept: list[Any] = []
    for entity in entities or ():
        if entity.offset < 0 or entity.length <= 0 or entity.offset >= size:
            continue
        if isinstance(entity, types.InputMessageEntityMentionName):
            entity = _mention(world, me, entity)
            if entity is None:
                continue
        if entity.offset + entity.length > size:
            entity = copy.copy(entity)
            entity.length = size - entity.offset
        kept.append(entity)
    return tuple(sorted(kept, key=lambda e: e.offset))
