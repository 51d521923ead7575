"""In-memory world of the sandbox DC: accounts, channels and their messages."""

import hmac
import os
import re
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any, Literal

from .errors import bad_request

UPDATE_LOG_LIMIT = 5000
USER_ID_BASE = 7_000_000
CHANNEL_ID_BASE = 1_900_000_000
_USERNAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{3,31}$")
# How many dialogs a folder holds pinned, as Telegram allows an account without
# Premium: 5 in the main list, 100 in the archive.
PINNED_LIMITS = {0: 5, 1: 100}


def now() -> int:
    return int(time.time())


@dataclass(frozen=True)
class PeerRef:
    """A dialog: a user (private chat) or a channel/supergroup."""

    kind: Literal["user", "channel"]
    id: int

    @property
    def marked(self) -> int:
        """The id the client library uses (channels as -100...)."""
        return self.id if self.kind == "user" else -(10**12 + self.id)

    @staticmethod
    def parse_marked(value: int) -> "PeerRef":
        if value > 0:
            return PeerRef("user", value)
        if value < -(10**12):
            return PeerRef("channel", -value - 10**12)
        raise ValueError(f"unsupported peer id {value}")


@dataclass(frozen=True)
class FwdInfo:
    date: int
    from_peer: PeerRef | None
    channel_post: int | None = None


@dataclass
class StoredMessage:
    """One message in an account's private box or in a channel."""

    id: int
    peer: PeerRef
    from_id: int | None
    out: bool
    text: str
    date: int
    random_id: int | None = None
    fwd: FwdInfo | None = None
    post: bool = False
    action: Literal["channel_create"] | None = None
    reply_to: int | None = None
    entities: tuple[Any, ...] = ()  # TL MessageEntity objects, rendered as stored
    silent: bool = False
    # A private message exists once per party, each with its own id; this is
    # the other party's copy, so a reply can point at the recipient's own id.
    twin_id: int | None = None


@dataclass(frozen=True)
class SentRef:
    """What a random_id produced, so a resend can be answered identically."""

    peer: PeerRef
    msg_id: int
    pts: int


@dataclass(frozen=True)
class UpdateEntry:
    """One pts step of an account: a new private message or a read mark."""

    pts: int
    msg_id: int | None = None
    read: tuple[PeerRef, int] | None = None


@dataclass
class Password:
    salt1: bytes
    salt2: bytes
    verifier: int
    hint: str = ""


@dataclass
class Account:
    id: int
    access_hash: int
    phone: str
    username: str | None
    first_name: str
    last_name: str = ""
    password: Password | None = None
    banned: bool = False
    box: dict[int, StoredMessage] = field(default_factory=dict)
    by_peer: dict[PeerRef, list[int]] = field(default_factory=dict)
    last_msg_id: int = 0
    pts: int = 1
    log: deque[UpdateEntry] = field(default_factory=lambda: deque(maxlen=UPDATE_LOG_LIMIT))
    sent: dict[int, SentRef] = field(default_factory=dict)
    read_inbox: dict[PeerRef, int] = field(default_factory=dict)
    channels: set[int] = field(default_factory=set)
    archived: set[PeerRef] = field(default_factory=set)  # dialogs in folder 1
    pinned: list[PeerRef] = field(default_factory=list)  # of both folders, top first

    @property
    def peer(self) -> PeerRef:
        return PeerRef("user", self.id)

    def has_dialog(self, peer: PeerRef) -> bool:
        return bool(self.by_peer.get(peer)) or (peer.kind == "channel" and peer.id in self.channels)

    def file_dialogs(self, moves: list[tuple[PeerRef, int]]) -> None:
        """Move dialogs to the archive (folder 1) or back to the main list (0): all of
        them, or none when one is not a dialog of the account or names another folder."""
        for peer, folder in moves:
            if folder not in (0, 1):
                raise bad_request("FOLDER_ID_INVALID")
            if not self.has_dialog(peer):
                raise bad_request("PEER_ID_INVALID")
        for peer, folder in moves:
            if folder != self.folder_of(peer) and peer in self.pinned:
                self.pinned.remove(peer)  # a pin belongs to the list it was made in
            if folder:
                self.archived.add(peer)
            else:
                self.archived.discard(peer)

    def folder_of(self, peer: PeerRef) -> int:
        return 1 if peer in self.archived else 0

    def pinned_in(self, folder: int | None) -> list[PeerRef]:
        """The folder's pinned dialogs in pin order (None: the main list's, then the
        archive's)."""
        if folder is None:
            return self.pinned_in(0) + self.pinned_in(1)
        return [p for p in self.pinned if self.folder_of(p) == folder]

    def _pinnable(self, peer: PeerRef) -> None:
        if not self.has_dialog(peer):
            raise bad_request("CHANNEL_PRIVATE" if peer.kind == "channel" else "PEER_HISTORY_EMPTY")

    def pin_dialog(self, peer: PeerRef, pinned: bool) -> None:
        """Pin a dialog on top of its folder's pinned ones, or unpin it; pinning one
        pinned already changes nothing."""
        self._pinnable(peer)
        if not pinned:
            if peer in self.pinned:
                self.pinned.remove(peer)
            return
        if peer in self.pinned:
            return
        folder = self.folder_of(peer)
        if len(self.pinned_in(folder)) >= PINNED_LIMITS[folder]:
            raise bad_request("PINNED_DIALOGS_TOO_MUCH")
        self.pinned.insert(0, peer)

    def reorder_pinned(self, folder: int, order: list[PeerRef], *, force: bool) -> None:
        """Pin ``order``'s dialogs of ``folder`` in that order, the folder's other pinned
        ones after them (unpinned with ``force``); none change on an error."""
        for peer in order:
            self._pinnable(peer)
            if self.folder_of(peer) != folder:
                raise bad_request("PEER_ID_INVALID")
        rest = [] if force else [p for p in self.pinned_in(folder) if p not in order]
        pinned = list(dict.fromkeys(order)) + rest
        if len(pinned) > PINNED_LIMITS[folder]:
            raise bad_request("PINNED_DIALOGS_TOO_MUCH")
        others = [p for p in self.pinned if self.folder_of(p) != folder]
        self.pinned = pinned + others

    def store(self, message: StoredMessage) -> int:
        """Put a message into the private box; returns the new pts."""
        self.box[message.id] = message
        self.by_peer.setdefault(message.peer, []).append(message.id)
        return self.bump(msg_id=message.id)

    def next_id(self) -> int:
        self.last_msg_id += 1
        return self.last_msg_id

    def bump(self, *, msg_id: int | None = None, read: tuple[PeerRef, int] | None = None) -> int:
        self.pts += 1
        self.log.append(UpdateEntry(self.pts, msg_id, read))
        return self.pts


@dataclass
class Channel:
    id: int
    access_hash: int
    title: str
    megagroup: bool
    creator_id: int
    date: int
    username: str | None = None
    invite_hash: str | None = None
    members: dict[int, int] = field(default_factory=dict)
    messages: dict[int, StoredMessage] = field(default_factory=dict)
    last_msg_id: int = 0
    pts: int = 1
    log: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=UPDATE_LOG_LIMIT))

    @property
    def peer(self) -> PeerRef:
        return PeerRef("channel", self.id)

    def append(self, message: StoredMessage) -> int:
        self.messages[message.id] = message
        self.pts += 1
        self.log.append((self.pts, message.id))
        return self.pts


# push(user_ids, make): deliver make(user_id) to each of those users who is online.
Pusher = Callable[[Iterable[int], Callable[[int], object]], None]


class World:
    """All accounts and channels, plus the indexes to find them."""

    def __init__(self) -> None:
        self._secret = os.urandom(16)
        self.accounts: dict[int, Account] = {}
        self.channels: dict[int, Channel] = {}
        self.by_phone: dict[str, int] = {}
        self.by_username: dict[str, PeerRef] = {}
        self.by_invite: dict[str, int] = {}
        self._next_user = USER_ID_BASE
        self._next_channel = CHANNEL_ID_BASE
        self.push: Pusher | None = None

    def access_hash(self, peer: PeerRef) -> int:
        digest = hmac.new(self._secret, f"{peer.kind}:{peer.id}".encode(), sha256).digest()
        value: int = struct.unpack("<q", digest[:8])[0]
        return value

    def _claim_username(self, username: str | None, peer: PeerRef) -> str | None:
        if username is None:
            return None
        username = username.lstrip("@")
        if not _USERNAME_RE.match(username):
            raise bad_request("USERNAME_INVALID")
        if username.lower() in self.by_username:
            raise bad_request("USERNAME_OCCUPIED")
        self.by_username[username.lower()] = peer
        return username

    def create_account(
        self,
        phone: str,
        username: str | None = None,
        first_name: str = "",
        last_name: str = "",
    ) -> Account:
        """Register a new account; phone and username must be free."""
        if phone in self.by_phone:
            raise bad_request("PHONE_NUMBER_OCCUPIED")
        self._next_user += 1
        peer = PeerRef("user", self._next_user)
        name = self._claim_username(username, peer)
        account = Account(
            id=peer.id,
            access_hash=self.access_hash(peer),
            phone=phone,
            username=name,
            first_name=first_name or f"User {phone[-4:]}",
            last_name=last_name,
        )
        self.accounts[account.id] = account
        self.by_phone[phone] = account.id
        return account

    def create_channel(
        self,
        creator: Account,
        title: str,
        *,
        megagroup: bool,
        username: str | None = None,
        invite_hash: str | None = None,
    ) -> Channel:
        """Create a channel or supergroup with its creation service message."""
        if invite_hash is not None and invite_hash in self.by_invite:
            raise bad_request("INVITE_HASH_OCCUPIED")
        self._next_channel += 1
        peer = PeerRef("channel", self._next_channel)
        name = self._claim_username(username, peer)
        channel = Channel(
            id=peer.id,
            access_hash=self.access_hash(peer),
            title=title,
            megagroup=megagroup,
            creator_id=creator.id,
            date=now(),
            username=name,
            invite_hash=invite_hash,
        )
        self.channels[channel.id] = channel
        if invite_hash is not None:
            self.by_invite[invite_hash] = channel.id
        channel.last_msg_id = 1
        channel.append(
            StoredMessage(1, peer, creator.id, False, "", channel.date, action="channel_create")
        )
        self.join(creator, channel)
        return channel

    def join(self, account: Account, channel: Channel) -> bool:
        """Add a member; False if it already was one."""
        if account.id in channel.members:
            return False
        channel.members[account.id] = now()
        account.channels.add(channel.id)
        return True
