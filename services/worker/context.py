"""What a handler sees of its job."""

from __future__ import annotations

from dataclasses import dataclass

from services.worker.state import WorkerState
from shared.jobs.envelope import Envelope


@dataclass(frozen=True)
class JobContext:
    state: WorkerState
    envelope: Envelope
    attempt: int

    @property
    def job_id(self) -> str:
        return self.envelope.id

    @property
    def tenant(self) -> str:
        return self.envelope.tenant

    async def annotate(self, **fields: str | int) -> None:
        """Record extra fields on the running job (kept in its record and the archive)."""
        await self.state.jobs.transition(
            self.job_id, {k: str(v) for k, v in fields.items()}, allowed_from=("running",)
        )
