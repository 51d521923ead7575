"""Account control handlers (control queue)."""

from __future__ import annotations

import asyncio

from telethon import TelegramClient
from telethon.sessions import StringSession

from services.worker.context import JobContext
from services.worker.telegram import accounts
from services.worker.telegram.errors import Kind, map_error
from services.worker.telegram.pool import api_credentials, client_options
from shared import transit
from shared.errors import PermanentFailure, RetryableFailure
from shared.jobs.accounts import AccountOut, ImportParams


async def import_session(ctx: JobContext, params: ImportParams) -> AccountOut:
    """Validate a session with one get_me, then store it sealed."""
    settings = ctx.state.settings
    session = await transit.take(
        ctx.state.redis, settings.secret_key.get_secret_value(), params.session_ref
    )
    if session is None:
        raise PermanentFailure("session_expired", "The session handed to this job is gone.")
    api_id, api_hash = api_credentials(settings)
    client = TelegramClient(StringSession(session), api_id, api_hash, **client_options(settings))
    try:
        await asyncio.wait_for(client.connect(), settings.telegram_request_timeout)
        me = await asyncio.wait_for(client.get_me(), settings.telegram_request_timeout)
    except Exception as exc:
        mapped = map_error(exc)
        if mapped.kind in (Kind.RETRY, Kind.RECONNECT):
            raise RetryableFailure(mapped.code, mapped.message) from exc
        raise PermanentFailure("session_invalid", "Telegram does not accept this session.") from exc
    finally:
        await client.disconnect()
    if me is None:
        raise PermanentFailure("session_invalid", "The session is not logged in.")
    stored = await accounts.insert_active(
        ctx.state.db,
        vault=ctx.state.telegram.vault,
        tenant=ctx.tenant,
        session=session,
        me={
            "id": me.id,
            "username": me.username,
            "first_name": me.first_name,
            "phone": me.phone,
            "dc_id": client.session.dc_id,
        },
    )
    return AccountOut(account_id=stored, tg_user_id=me.id, username=me.username, state="active")
