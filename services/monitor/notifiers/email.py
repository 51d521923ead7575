"""Email over SMTP (standard library smtplib, run in a thread so the loop never blocks)."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from email.message import EmailMessage

from services.monitor.notifiers import NotifyError
from services.monitor.notifiers.config import EmailReceiver
from services.monitor.notifiers.payload import Notification


class EmailNotifier:
    def __init__(self, spec: EmailReceiver) -> None:
        self.spec = spec
        self.password = spec.secret_value()

    def message(self, n: Notification) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = n.title()
        msg["From"] = self.spec.sender
        msg["To"] = ", ".join(self.spec.to)
        msg["X-Tgflow-Notification-Id"] = n.id
        msg.set_content(n.text() + (f"\n\n{n.external_url}" if n.external_url else ""))
        return msg

    def _send_blocking(self, msg: EmailMessage) -> None:
        spec = self.spec
        context = ssl.create_default_context()
        smtp: smtplib.SMTP
        if spec.ssl:
            smtp = smtplib.SMTP_SSL(spec.host, spec.port, timeout=spec.timeout, context=context)
        else:
            smtp = smtplib.SMTP(spec.host, spec.port, timeout=spec.timeout)
        with smtp:
            if spec.starttls:
                smtp.starttls(context=context)
            if spec.username and self.password is not None:
                smtp.login(spec.username, self.password)
            smtp.send_message(msg)

    async def send(self, n: Notification) -> None:
        try:
            await asyncio.to_thread(self._send_blocking, self.message(n))
        except smtplib.SMTPResponseException as exc:
            final = 500 <= exc.smtp_code < 600
            raise NotifyError(
                f"SMTP {exc.smtp_code}: {exc.smtp_error!r}", retryable=not final
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise NotifyError(f"{type(exc).__name__}: {exc}") from None
