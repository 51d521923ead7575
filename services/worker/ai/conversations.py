"""ai.summarize_chat and ai.reply: Telegram history in, a model's answer out, as chains.

The history comes from telegram.get_history jobs (run by the account's owner worker
on the Telegram queue, never by a second client here), the answer from an ai.complete
job, and a reply goes out through telegram.send_message, whose id, derived from this
job's, makes it exactly-once like every send.
"""

from __future__ import annotations

from datetime import datetime

from services.worker.ai.chains import Chain
from services.worker.ai.runtime import AiRuntime
from services.worker.context import JobContext
from shared.errors import PermanentFailure
from shared.jobs.ai import (
    COMPLETE,
    ChatMessage,
    ChatParams,
    CompleteParams,
    CompleteResult,
    ModelSpec,
    ReplyParams,
    ReplyResult,
    SummarizeChatParams,
    SummarizeChatResult,
    prompt_tokens,
)
from shared.jobs.contract import ParamsRejected
from shared.jobs.telegram import (
    GET_HISTORY,
    SEND_MESSAGE,
    GetHistoryParams,
    MessageOut,
    SendMessageParams,
)

PAGE = 100  # telegram.get_history's largest page
MAX_REPLY_CHARS = 4096

STYLES = {
    "brief": "Summarise the Telegram conversation below in two or three sentences.",
    "detailed": (
        "Summarise the Telegram conversation below in detail: its topics, what was "
        "decided, and what is still open."
    ),
    "bullets": "Summarise the Telegram conversation below as short bullet points.",
}
REPLY_SYSTEM = (
    "You write the next message in a Telegram chat for the account's owner. Answer the "
    "message marked with >>. Write only the text of the reply."
)


def _model(ai: AiRuntime, params: ChatParams) -> tuple[str, str, ModelSpec]:
    try:
        provider, model = ai.catalog.resolve(params.provider, params.model)
    except ParamsRejected as exc:
        raise PermanentFailure(exc.code, exc.message) from None
    spec = provider.model(model)
    assert spec is not None
    return provider.name, model, spec


def _line(message: MessageOut, marked: bool = False) -> str:
    when = message.date.strftime("%Y-%m-%d %H:%M") if message.date else "?"
    text = message.text or (f"[{message.media}]" if message.media else "")
    return f"{'>> ' if marked else ''}[{when}] {message.sender_id or '?'}: {text}"


def _fit(
    system: str, lines: list[str], spec: ModelSpec, params: ChatParams
) -> tuple[list[ChatMessage], int]:
    """The conversation for the model, dropping the oldest lines until it fits, and how
    many lines (messages: one may hold several newlines) it kept."""
    room = spec.context_tokens - (params.max_tokens or 0)
    while lines:
        messages = [
            ChatMessage(role="system", content=system),
            ChatMessage(role="user", content="\n".join(lines)),
        ]
        if prompt_tokens(messages, spec) <= room:
            return messages, len(lines)
        lines = lines[max(1, len(lines) // 10) :]
    raise PermanentFailure("prompt_too_long", "Not even the newest message fits the model.")


def _complete(
    params: ChatParams, provider: str, model: str, chat: list[ChatMessage]
) -> CompleteParams:
    return CompleteParams(
        provider=provider,
        model=model,
        messages=chat,
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        cache=params.cache,
    )


async def _history(chain: Chain, params: SummarizeChatParams) -> list[MessageOut]:
    """Up to ``limit`` messages (newer than ``since``), newest first, in pages."""
    found: list[MessageOut] = []
    offset = 0
    while len(found) < params.limit:
        want = min(PAGE, params.limit - len(found))
        page = await chain.step(
            f"history-{len(chain.steps)}",
            GET_HISTORY,
            GetHistoryParams(
                account_id=params.account_id, peer=params.peer, limit=want, offset_id=offset
            ),
        )
        fresh = [m for m in page.messages if _after(m.date, params.since)]
        found += _readable(fresh)
        if len(page.messages) < want or len(fresh) < len(page.messages):
            break
        offset = page.messages[-1].id
    return found[: params.limit]


def _readable(messages: list[MessageOut]) -> list[MessageOut]:
    """What a model is shown: messages, not service messages (a join, the chat's
    creation), which history pages include but which have no text to read."""
    return [m for m in messages if m.action is None]


def _after(when: datetime | None, since: datetime | None) -> bool:
    return since is None or (when is not None and when > since)


async def summarize_chat(
    ai: AiRuntime, ctx: JobContext, params: SummarizeChatParams
) -> SummarizeChatResult:
    provider, model, spec = _model(ai, params)
    chain = Chain(ctx)
    history = await _history(chain, params)
    if not history:
        raise PermanentFailure("no_messages", "The chat has no messages to summarise.")
    chat, covered = _fit(STYLES[params.style], [_line(m) for m in reversed(history)], spec, params)
    answer = await chain.step("summary", COMPLETE, _complete(params, provider, model, chat))
    return SummarizeChatResult(
        summary=answer.text,
        messages=covered,
        first_message_id=history[covered - 1].id,
        last_message_id=history[0].id,
        steps=chain.steps,
        **_accounting(answer),
    )


async def reply(ai: AiRuntime, ctx: JobContext, params: ReplyParams) -> ReplyResult:
    provider, model, spec = _model(ai, params)
    chain = Chain(ctx)
    page = await chain.step(
        "history",
        GET_HISTORY,
        GetHistoryParams(
            account_id=params.account_id,
            peer=params.peer,
            limit=params.context,
            offset_id=params.message_id + 1,
        ),
    )
    readable = _readable(page.messages)
    if not any(m.id == params.message_id for m in readable):
        raise PermanentFailure("message_not_found", f"No message {params.message_id} there.")
    lines = [_line(m, m.id == params.message_id) for m in reversed(readable)]
    system = REPLY_SYSTEM + (f"\n{params.instructions}" if params.instructions else "")
    chat, _ = _fit(system, lines, spec, params)
    answer = await chain.step("reply", COMPLETE, _complete(params, provider, model, chat))
    text = answer.text.strip()[:MAX_REPLY_CHARS]
    if not text:
        raise PermanentFailure("empty_reply", "The model answered with nothing to send.")
    sent_id = None
    if params.send:
        send = SendMessageParams(
            account_id=params.account_id, peer=params.peer, text=text, reply_to=params.message_id
        )
        sent_id = (await chain.step("send", SEND_MESSAGE, send)).message_id
    return ReplyResult(
        text=text,
        sent=params.send,
        sent_message_id=sent_id,
        steps=chain.steps,
        **_accounting(answer),
    )


def _accounting(answer: CompleteResult) -> dict[str, object]:
    return {
        "provider": answer.provider,
        "model": answer.model,
        "usage": answer.usage,
        "cost": answer.cost,
        "cached": answer.cached,
    }
