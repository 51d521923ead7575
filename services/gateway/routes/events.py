"""Follow one job as Server-Sent Events.

The stream subscribes to the job's event channel before it reads the job's state, so
no change can fall between the two: it sends the current state, then every later
change, and ends after ``finished``. Each event's ``id`` is the job's ``seq``; a client
that reconnects with ``Last-Event-ID`` gets only what came after it, and a finished
job it has seen to the end answers 204, which tells EventSource to stop reconnecting.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Response
from fastapi.responses import StreamingResponse
from prometheus_client import Counter, Gauge
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError
from starlette.background import BackgroundTask

from services.gateway.deps import Reader, State
from services.gateway.errors import ApiError
from services.gateway.routes.jobs import find_job
from services.gateway.state import GatewayState
from shared.delivery.events import JobEvent
from shared.delivery.lua import job_events_channel
from shared.jobs.record import JobRecord
from shared.logs import get_logger

log = get_logger(__name__)

router = APIRouter(prefix="/v1", tags=["jobs"])

STREAMS = Gauge("tgflow_sse_streams", "Job event streams open.")
REJECTED = Counter("tgflow_sse_streams_rejected_total", "Job event streams refused at the limit.")

RECONNECT_MS = 2000  # the ``retry:`` hint to EventSource clients
_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def frame(event: JobEvent) -> str:
    return f"id: {event.seq}\nevent: {event.event}\ndata: {event.model_dump_json()}\n\n"


def _last_seen(header: str | None) -> int:
    """Last-Event-ID as a seq; anything else means "from the start"."""
    value = (header or "").strip()
    return int(value) if value.isascii() and value.isdigit() else 0  # not "²", say


class _Slot:
    """One of the gateway's stream slots; released once, whoever gets there first."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self.held = True
        state.streams += 1
        STREAMS.inc()

    def release(self) -> None:
        if self.held:
            self.held = False
            self.state.streams -= 1
            STREAMS.dec()


@router.get(
    "/jobs/{job_id}/events",
    summary="Follow a job as Server-Sent Events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "Events queued, started, progress, retrying and finished "
            "(id = the job's seq; data = a JobEvent); ends after finished.",
        },
        204: {"description": "The job finished and Last-Event-ID already covers it."},
        404: {"description": "No such job for this tenant"},
        503: {"description": "This gateway serves its maximum of event streams"},
    },
)
async def job_events(
    job_id: str,
    state: State,
    principal: Reader,
    last_event_id: Annotated[str | None, Header()] = None,
) -> Response:
    record = await find_job(state, principal.tenant, job_id)
    if record is None:
        raise ApiError(404, "job_not_found", f"No job {job_id} for this tenant.")
    after = _last_seen(last_event_id)
    if record.status.is_terminal:
        if record.seq <= after:
            return Response(status_code=204)
        return StreamingResponse(
            _finished(record), media_type="text/event-stream", headers=_HEADERS
        )
    if state.streams >= state.settings.sse_max_streams or state.events is None:
        REJECTED.inc()
        raise ApiError(
            503,
            "too_many_streams",
            "This gateway serves its maximum of event streams; retry shortly or poll the job.",
            headers={"Retry-After": "5"},
        )
    slot = _Slot(state)
    return StreamingResponse(
        _follow(state, principal.tenant, record.id, after, slot),
        media_type="text/event-stream",
        headers=_HEADERS,
        background=BackgroundTask(slot.release),  # if the stream never started
    )


async def _finished(record: JobRecord) -> AsyncIterator[str]:
    yield f"retry: {RECONNECT_MS}\n\n"
    yield frame(JobEvent.of(record))


async def _follow(
    state: GatewayState, tenant: str, job_id: str, after: int, slot: _Slot
) -> AsyncIterator[str]:
    assert state.events is not None
    pubsub = state.events.pubsub(ignore_subscribe_messages=True)
    try:
        yield f"retry: {RECONNECT_MS}\n\n"
        await pubsub.subscribe(job_events_channel(job_id))
        record = await find_job(state, tenant, job_id)  # read after subscribing: no gap
        if record is None:
            return
        current = JobEvent.of(record)
        if current.seq > after:
            yield frame(current)
        if record.status.is_terminal:
            return
        async for event in _live(state, pubsub, job_id, max(after, current.seq)):
            if event is None:
                yield ": keep-alive\n\n"
                continue
            if event.event == "finished":
                final = await find_job(state, tenant, job_id)  # with its result
                if final is not None and final.status.is_terminal:
                    event = JobEvent.of(final)
                yield frame(event)
                return
            yield frame(event)
    except RedisError as exc:
        # The client reconnects with Last-Event-ID and misses nothing.
        log.warning("event stream ended by redis", error=type(exc).__name__, job_id=job_id)
    finally:
        with anyio.CancelScope(shield=True):  # a disconnect cancels the stream; still close
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        slot.release()


async def _live(
    state: GatewayState, pubsub: PubSub, job_id: str, seen: int
) -> AsyncIterator[JobEvent | None]:
    """Events newer than ``seen``, and None when a keep-alive is due; ends on shutdown."""
    keepalive = state.settings.sse_keepalive_seconds
    quiet_since = time.monotonic()
    while not state.closing:
        message = await pubsub.get_message(timeout=min(1.0, keepalive))
        if message is None:
            if time.monotonic() - quiet_since >= keepalive:
                quiet_since = time.monotonic()
                yield None
            continue
        event = JobEvent.from_message(job_id, message["data"])
        if event.seq <= seen:
            continue  # already sent as the state read after subscribing
        seen = event.seq
        quiet_since = time.monotonic()
        yield event
