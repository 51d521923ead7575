"""Injected failures per account and optionally per TL method.

Semantics (also in docs/sandbox.md):

* ``flood_wait`` / ``slowmode_wait``: with ``times`` the next N matching calls
  fail with ``FLOOD_WAIT_<seconds>`` (``SLOWMODE_WAIT_<seconds>``); without it
  every matching call during the next ``seconds`` fails with the remaining
  whole seconds, the way Telegram's own flood window behaves.
* ``drop_before`` / ``drop_after``: close the connection instead of answering,
  before or after executing the call (``times`` defaults to 1).
* ``delay``: hold the answer ``seconds`` (``times`` defaults to unlimited).
* ``delay_after``: execute the call, then hold its answer ``seconds``, so a client
  can die after the server acted but before it heard back (``times`` defaults to 1).
* ``error``: the next matching calls (``times`` defaults to unlimited) fail with
  ``400 <error>``, a name of Telegram's (``PHONE_NUMBER_FLOOD``).
* ``revoke`` / ``ban``: applied at once to the account; listed for the record.
"""

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

FaultKind = Literal[
    "flood_wait",
    "slowmode_wait",
    "drop_before",
    "drop_after",
    "delay",
    "delay_after",
    "error",
    "revoke",
    "ban",
]
Stage = Literal["before", "after"]
PRE_KINDS = frozenset({"flood_wait", "slowmode_wait", "drop_before", "delay", "error"})
IMMEDIATE_KINDS = frozenset({"revoke", "ban"})


@dataclass
class Fault:
    id: int
    user_id: int
    kind: FaultKind
    method: str | None = None
    seconds: float = 0.0
    times: int | None = None
    error: str | None = None  # the RPC error an ``error`` fault answers with
    created: float = field(default_factory=time.time)
    fired: int = 0

    @property
    def until(self) -> float | None:
        """End of a period-style flood window (no ``times`` given)."""
        if self.kind in ("flood_wait", "slowmode_wait") and self.times is None:
            return self.created + self.seconds
        return None

    def active(self, at: float) -> bool:
        if self.kind in IMMEDIATE_KINDS:
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        until = self.until
        return until is None or at < until

    def error_seconds(self, at: float) -> int:
        until = self.until
        if until is None:
            return max(0, math.ceil(self.seconds))
        return max(1, math.ceil(until - at))

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["until"] = self.until
        return data


def default_times(kind: FaultKind, times: int | None) -> int | None:
    if times is None and kind in ("drop_before", "drop_after", "delay_after"):
        return 1
    return times


class FaultBook:
    """The active faults; matching consumes one use."""

    def __init__(self) -> None:
        self._faults: dict[int, Fault] = {}
        self._next = 0

    def add(
        self,
        user_id: int,
        kind: FaultKind,
        method: str | None = None,
        seconds: float = 0.0,
        times: int | None = None,
        error: str | None = None,
    ) -> Fault:
        self._next += 1
        times = default_times(kind, times)
        fault = Fault(self._next, user_id, kind, method, seconds, times, error)
        self._faults[fault.id] = fault
        return fault

    def remove(self, fault_id: int) -> Fault | None:
        return self._faults.pop(fault_id, None)

    def all(self) -> list[Fault]:
        return list(self._faults.values())

    def match(self, user_id: int | None, method: str, stage: Stage) -> Fault | None:
        """The first active fault for this call at this stage, consuming one use."""
        if user_id is None or not self._faults:
            return None
        at = time.time()
        for fault in self._faults.values():
            if fault.user_id != user_id or (fault.method and fault.method != method):
                continue
            in_stage = (fault.kind in PRE_KINDS) == (stage == "before")
            if in_stage and fault.active(at):
                fault.fired += 1
                return fault
        return None

    def clear(self) -> None:
        self._faults.clear()
