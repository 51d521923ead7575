"""AI handlers: thin wrappers over services/worker/ai."""

from __future__ import annotations

from services.worker.ai import complete as completion
from services.worker.ai.runtime import AiRuntime
from services.worker.context import JobContext
from shared.jobs.ai import CompleteParams, CompleteResult


def runtime(ctx: JobContext) -> AiRuntime:
    ai = ctx.state.ai
    if ai is None:
        raise RuntimeError("this worker has no AI runtime")
    return ai


async def complete(ctx: JobContext, params: CompleteParams) -> CompleteResult:
    """Run a chat completion."""
    return await completion.complete(runtime(ctx), ctx, params)
