"""A string session whose entity store is bounded and indexed.

Telethon's ``MemorySession`` (and so ``StringSession``) keeps every user and chat it has
ever seen, with their access hashes, in one set for the life of the client, and scans
that whole set on each lookup. A worker's client lives for hours and may read member
lists of thousands: its store would grow without end and every peer lookup would slow
with it. This one keeps the most recently seen ``limit`` entities of an account,
looked up by id, username and phone through dictionaries.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from telethon import utils
from telethon.sessions import StringSession
from telethon.tl.types import PeerChannel, PeerChat, PeerUser

# (marked id, access hash, username, phone, display name), as Telethon's sessions store it.
Row = tuple[int, int, str | None, str | None, str | None]


class BoundedSession(StringSession):  # type: ignore[misc]
    def __init__(self, string: str | None = None, *, limit: int = 2000) -> None:
        super().__init__(string)
        self.limit = limit
        self._rows: OrderedDict[int, Row] = OrderedDict()  # least recently seen first
        self._by_username: dict[str, int] = {}
        self._by_phone: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self) -> list[Row]:
        """Every stored entity, least recently seen first."""
        return list(self._rows.values())

    def adopt(self, rows: list[Row]) -> None:
        """Take over the entities a previous client of the account had seen, as if seen
        before anything this one has seen itself."""
        own = list(self._rows.values())
        for row in [*rows, *own]:
            self._remember(row)
        self._trim()

    def process_entities(self, tlo: Any) -> None:
        for row in self._entities_to_rows(tlo):
            self._remember(row)
        self._trim()

    def _remember(self, row: Row) -> None:
        self._forget(row[0])
        self._rows[row[0]] = row
        if row[2]:
            self._by_username[row[2]] = row[0]
        if row[3]:
            self._by_phone[row[3]] = row[0]

    def _trim(self) -> None:
        while len(self._rows) > self.limit:
            self._forget(next(iter(self._rows)))

    def _forget(self, marked_id: int) -> None:
        row = self._rows.pop(marked_id, None)
        if row is None:
            return
        if row[2] and self._by_username.get(row[2]) == marked_id:
            del self._by_username[row[2]]
        if row[3] and self._by_phone.get(row[3]) == marked_id:
            del self._by_phone[row[3]]

    def _found(self, marked_id: int | None) -> tuple[int, int] | None:
        if marked_id is None or (row := self._rows.get(marked_id)) is None:
            return None
        self._rows.move_to_end(marked_id)  # used: kept longer
        return row[0], row[1]

    def get_entity_rows_by_phone(self, phone: str) -> tuple[int, int] | None:
        return self._found(self._by_phone.get(phone))

    def get_entity_rows_by_username(self, username: str) -> tuple[int, int] | None:
        return self._found(self._by_username.get(username))

    def get_entity_rows_by_name(self, name: str) -> tuple[int, int] | None:
        found = next((r[0] for r in reversed(self._rows.values()) if r[4] == name), None)
        return self._found(found)

    def get_entity_rows_by_id(self, id: int, exact: bool = True) -> tuple[int, int] | None:
        if exact:
            return self._found(id)
        marked = (
            utils.get_peer_id(PeerUser(id)),
            utils.get_peer_id(PeerChat(id)),
            utils.get_peer_id(PeerChannel(id)),
        )
        return self._found(next((m for m in marked if m in self._rows), None))
