"""Telegram, through tgflow's own job queue: one ``telegram.send_message`` job per
notification, from a configured account to a configured chat.

The job type arrives with Telegram jobs; until it is registered this notifier
refuses with a clear error instead of pretending to send.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

from pydantic import ValidationError

from services.monitor.notifiers import NotifierUnavailable
from services.monitor.notifiers.config import TelegramReceiver
from services.monitor.notifiers.payload import Notification
from shared.ids import uuid7
from shared.jobs import REGISTRY
from shared.jobs.envelope import Envelope, utcnow
from shared.queue import JobStore

JOB_TYPE = "telegram.send_message"
MAX_TEXT = 4096  # Telegram's message length limit


class TelegramNotifier:
    def __init__(self, spec: TelegramReceiver, store: JobStore) -> None:
        self.spec = spec
        self.store = store

    def _params(self, n: Notification) -> dict[str, object]:
        names = self.spec.params_map
        return {
            names.get("account", "account_id"): self.spec.account,
            names.get("chat", "peer"): self.spec.chat,
            names.get("text", "text"): n.text()[:MAX_TEXT],
        }

    async def send(self, n: Notification) -> None:
        job_type = REGISTRY.get(JOB_TYPE)
        if job_type is None:
            raise NotifierUnavailable(
                f"the {JOB_TYPE} job type is not available in this tgflow version, "
                f"so receiver {self.spec.name!r} cannot send to Telegram"
            )
        try:
            params = job_type.params.model_validate(self._params(n)).model_dump(mode="json")
        except ValidationError as exc:
            problem = exc.errors()[0]["msg"]
            raise NotifierUnavailable(
                f"receiver {self.spec.name!r}: {JOB_TYPE} params do not fit: {problem}"
            ) from None
        now = utcnow()
        env = Envelope(
            id=str(uuid7()),
            type=JOB_TYPE,
            tenant=self.spec.tenant,
            params=params,
            timeout=job_type.timeout,
            created_at=now,
            run_at=now + timedelta(0),
            # The notification id is stable across retries and restarts: one message.
            idempotency_key="monitor:" + hashlib.sha256(n.id.encode()).hexdigest()[:32],
        )
        await self.store.submit(env)
