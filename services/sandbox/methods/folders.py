"""folders.* : moving dialogs to the archive (folder 1) and back."""

from typing import Any

from telethon.tl import functions, types

from services.sandbox.peers import input_peer
from services.sandbox.render import peer_tl
from services.sandbox.rpc import Call, method
from services.sandbox.state import now


@method(functions.folders.EditPeerFoldersRequest)
def edit_peer_folders(call: Call, req: Any) -> Any:
    me = call.account
    world = call.core.world
    moves = [(input_peer(world, me, f.peer), f.folder_id) for f in req.folder_peers]
    me.file_dialogs(moves)
    pts = me.bump()
    filed = [types.FolderPeer(peer=peer_tl(p), folder_id=f) for p, f in moves]
    update = types.UpdateFolderPeers(folder_peers=filed, pts=pts, pts_count=1)
    return types.Updates(updates=[update], users=[], chats=[], date=now(), seq=0)
