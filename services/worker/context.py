"""What a handler sees of its job."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.worker.state import WorkerState
from shared.jobs.envelope import Envelope


@dataclass(frozen=True)
class JobContext:
    state: WorkerState
    envelope: Envelope
    attempt: int
    extra: dict[str, str] = field(default_factory=dict)
    # Set when a cancel cut the job while an effect of it was under way with no answer
    # (see tasks.telegram.send_once): the details of the cancelled job's error.
    in_doubt: dict[str, Any] = field(default_factory=dict)

    @property
    def job_id(self) -> str:
        return self.envelope.id

    @property
    def tenant(self) -> str:
        return self.envelope.tenant

    def annotate(self, **fields: str | int) -> None:
        """Attach fields to the job's record; they are written with its next transition."""
        self.extra.update({k: str(v) for k, v in fields.items()})

    async def report(self, **fields: str | int) -> None:
        """Write fields (such as ``progress``) to the running job's record now."""
        await self.state.jobs.transition(
            self.job_id, {k: str(v) for k, v in fields.items()}, allowed_from=("running",)
        )
