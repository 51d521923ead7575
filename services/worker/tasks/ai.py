"""AI handlers: thin wrappers over services/worker/ai."""

from __future__ import annotations

from services.worker.ai import complete as completion
from services.worker.ai import conversations
from services.worker.ai.runtime import AiRuntime
from services.worker.context import JobContext
from shared.jobs.ai import (
    CompleteParams,
    CompleteResult,
    ReplyParams,
    ReplyResult,
    SummarizeChatParams,
    SummarizeChatResult,
)


def runtime(ctx: JobContext) -> AiRuntime:
    ai = ctx.state.ai
    if ai is None:
        raise RuntimeError("this worker has no AI runtime")
    return ai


async def complete(ctx: JobContext, params: CompleteParams) -> CompleteResult:
    """Run a chat completion."""
    return await completion.complete(runtime(ctx), ctx, params)


async def summarize_chat(ctx: JobContext, params: SummarizeChatParams) -> SummarizeChatResult:
    """Read a chat's history and summarise it, as two child jobs."""
    return await conversations.summarize_chat(runtime(ctx), ctx, params)


async def reply(ctx: JobContext, params: ReplyParams) -> ReplyResult:
    """Write a reply to a message (and send it), as child jobs."""
    return await conversations.reply(runtime(ctx), ctx, params)
