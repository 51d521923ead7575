"""Accounts come back on their own, whether or not jobs arrive for them.

A reconnecting account of this worker's shards is tried again with one cheap call
when its backoff (exponential with full jitter, capped, never giving up: see
``ClientPool.connection_lost``) has passed; the call that goes through marks it active.
A flood wait that has ended turns back into active without a network call. Jobs that
arrive meanwhile are deferred as before; this only means an idle account does not stay
``reconnecting`` or ``flood_wait`` in the API and on the monitor's dashboards forever.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

from telethon import types
from telethon.tl.functions.users import GetUsersRequest

from services.worker.telegram import accounts
from services.worker.telegram.accounts import State
from services.worker.telegram.runtime import TelegramRuntime
from shared.aio import raise_if_cancelling, sleep_unless
from shared.errors import Deferral, PermanentFailure, RetryableFailure
from shared.jobs.envelope import utcnow
from shared.logs import get_logger

log = get_logger(__name__)
BATCH = 500


class Recovery:
    def __init__(self, runtime: TelegramRuntime) -> None:
        self.runtime = runtime
        self._next_try: dict[uuid.UUID, datetime] = {}  # from each failed try's deferral
        self._after = uuid.UUID(int=0)  # each round goes on from here (by account id)

    async def run(self, stop: asyncio.Event, interval: float = 2.0) -> None:
        while not await sleep_unless(stop, interval):
            try:
                await self.once()
            except Exception as exc:  # the next round tries again
                raise_if_cancelling()
                log.warning("account recovery round failed", error=type(exc).__name__)

    async def once(self) -> int:
        """One round over the next ``BATCH`` accounts that are due (reconnecting, or in a
        flood wait that has ended), in account id order, starting over after the last;
        answers how many came back.

        Rows are read by id, not by age: accounts that cannot come back yet (another
        worker's, or still failing) would otherwise fill every round's window for good.
        """
        rows = await self.runtime.db.fetch(
            """SELECT id, tenant_id, state, flood_until FROM accounts
               WHERE state IN ('reconnecting', 'flood_wait')
                 AND (state = 'reconnecting' OR flood_until IS NULL OR flood_until <= now())
                 AND id > $2
               ORDER BY id LIMIT $1""",
            BATCH,
            self._after,
        )
        if len(rows) < BATCH:
            self._after = uuid.UUID(int=0)  # the end: the next round starts over
        else:
            self._after = rows[-1]["id"]
        now = utcnow()
        for passed in [a for a, at in self._next_try.items() if at <= now]:
            del self._next_try[passed]  # a time past is the same as none
        back = 0
        for row in rows:
            account_id: uuid.UUID = row["id"]
            if not self.runtime.pool.may_connect(account_id):
                continue  # another worker's shard: that worker's to bring back
            if row["state"] == State.FLOOD_WAIT:
                if row["flood_until"] is None or row["flood_until"] <= now:
                    back += await self._flood_over(account_id)
                continue
            if self._next_try.get(account_id, now) > now:
                continue
            back += await self._reconnect(row["tenant_id"], account_id)
        return back

    async def _flood_over(self, account_id: uuid.UUID) -> int:
        account = await accounts.load(self.runtime.db, account_id)
        if account is None or not await accounts.set_state(self.runtime.db, account, State.ACTIVE):
            return 0
        self.runtime.forget(account_id)
        return 1

    async def _reconnect(self, tenant: str, account_id: uuid.UUID) -> int:
        request = GetUsersRequest([types.InputUserSelf()])
        try:
            async with self.runtime.session(tenant, account_id) as tg:
                await tg.call("users.getUsers", lambda: tg.client(request))
        except Deferral as exc:  # still unreachable: its backoff says when to try again
            self._next_try[account_id] = exc.until
            return 0
        except (RetryableFailure, PermanentFailure) as exc:  # recorded by the runtime
            log.info("reconnect try failed", account_id=str(account_id), code=exc.code)
            return 0
        self._next_try.pop(account_id, None)
        log.info("account reconnected", account_id=str(account_id))
        return 1
