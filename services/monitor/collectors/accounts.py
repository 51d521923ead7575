"""Telegram accounts by state, and accounts in a flood wait over five minutes.

Data shape it expects (accounts arrive later): a table ``accounts`` with a ``state``
column and, for flood waits, a timestamptz ``flood_until``. Without the table the
source is reported absent.
"""

from __future__ import annotations

from services.monitor.clock import to_datetime
from services.monitor.collectors import Collected, Context, SourceAbsent
from services.monitor.samples import Sample

LONG_FLOOD_SECONDS = 300.0


class AccountsCollector:
    name = "accounts"
    produces = frozenset({"tgflow_accounts", "tgflow_flood_waits_long"})

    async def collect(self, ctx: Context) -> Collected:
        async with ctx.db.acquire() as conn:
            columns = {
                r["column_name"]
                for r in await conn.fetch(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND table_name = 'accounts'"
                )
            }
            if "state" not in columns:
                raise SourceAbsent("no accounts table with a state column")
            rows = await conn.fetch("SELECT state, count(*) AS n FROM accounts GROUP BY state")
            long_floods = None
            if "flood_until" in columns:
                limit = to_datetime(ctx.clock.now() + LONG_FLOOD_SECONDS)
                long_floods = await conn.fetchval(
                    "SELECT count(*) FROM accounts WHERE flood_until > $1", limit
                )
        out = [
            Sample(
                "tgflow_accounts", float(r["n"]), {"state": str(r["state"])}, "Accounts by state."
            )
            for r in rows
        ]
        if long_floods is not None:
            out.append(
                Sample("tgflow_flood_waits_long", float(long_floods), {}, "Flood waits over 5 min.")
            )
        return Collected(out, {"by_state": {str(r["state"]): r["n"] for r in rows}})
