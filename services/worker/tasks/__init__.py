"""Job handlers by domain; each job type in the contract maps to one handler here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from services.worker.context import JobContext
from services.worker.tasks import (
    accounts,
    ai,
    login,
    logout,
    system,
    telegram,
    telegram_dialogs,
    telegram_more,
)

Handler = Callable[[JobContext, Any], Awaitable[Any]]

HANDLERS: dict[str, Handler] = {
    "system.echo": system.echo,
    "system.sleep": system.sleep,
    "ai.complete": ai.complete,
    "ai.summarize_chat": ai.summarize_chat,
    "ai.reply": ai.reply,
    "account.import": accounts.import_session,
    "account.login_start": login.login_start,
    "account.login_code": login.login_code,
    "account.login_password": login.login_password,
    "account.logout": logout.logout,
    "telegram.cleanup_sessions": logout.cleanup_sessions,
    "telegram.get_me": telegram.get_me,
    "telegram.send_message": telegram.send_message,
    "telegram.get_history": telegram.get_history,
    "telegram.resolve": telegram.resolve,
    "telegram.get_messages": telegram_more.get_messages,
    "telegram.get_dialogs": telegram_dialogs.get_dialogs,
    "telegram.join_chat": telegram_more.join_chat,
    "telegram.forward_messages": telegram_more.forward_messages,
    "telegram.mark_read": telegram_more.mark_read,
    "telegram.get_participants": telegram_more.get_participants,
}
