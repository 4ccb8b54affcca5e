"""Live stats as Server-Sent Events, fed from the model's stats stream in Redis with
XREAD BLOCK (not from this process's memory), so every replica can serve it.

Each event is one published update (``event: stats``, data as one history entry) and
its SSE ``id`` is the Redis entry id: a client that reconnects with ``Last-Event-ID``
resumes exactly after the last entry it saw. Browsers' ``EventSource`` cannot send an
``Authorization`` header, so this endpoint (and only this one) also takes the API key
as ``access_token``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import orjson
from fastapi import APIRouter, Depends, Header, Query, Request
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse, ServerSentEvent

from service.api.deps import ModelDep, RegistryDep, SettingsDep
from service.api.schemas import ErrorBody
from service.auth import Authenticator
from service.errors import InvalidInputError, UnavailableError
from service.store import stats_history
from service.store.connection import UNREACHABLE
from service.watch_telemetry import WatchMetrics

logger = logging.getLogger(__name__)

RETRY_MS = 2000  # how long EventSource waits before reconnecting
_BLOCK_SECONDS = 1.0  # one XREAD BLOCK; also how soon a stream notices shutdown or deletion
_REDIS_RETRY_SECONDS = 1.0


async def require_read_or_token(
    request: Request,
    access_token: Annotated[
        str | None,
        Query(description="the API key, for clients that cannot send headers (EventSource)"),
    ] = None,
) -> None:
    """Like the other reads, but the key may also come as ``access_token``."""
    auth: Authenticator = request.app.state.authenticator
    if not auth.enabled:
        return
    header = request.headers.get("authorization")
    if header is None and access_token:
        header = f"Bearer {access_token}"
    auth.access(header)


router = APIRouter(prefix="/v1/models/{name}", tags=["watch"])
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "one `stats` event per published update"},
    401: {"model": ErrorBody, "description": "missing or invalid API key"},
    404: {"model": ErrorBody, "description": "no such model"},
    422: {"model": ErrorBody, "description": "malformed Last-Event-ID or after"},
    503: {"model": ErrorBody, "description": "Redis unreachable"},
}


def _start_id(last_event_id: str | None, after: str | None) -> str | None:
    """Where to resume: ``Last-Event-ID`` (a reconnect) wins over ``after`` (the first connect)."""
    start = last_event_id if last_event_id is not None else after
    if start is not None and not stats_history.is_entry_id(start):
        raise InvalidInputError(f"expected a stats entry id like '1718000000000-0' (got {start!r})")
    return start


async def _events(
    redis: Redis,
    prefix: str,
    name: str,
    after: str,
    block_ms: int,
    shutdown: anyio.Event,
    watch: WatchMetrics,
) -> AsyncIterator[ServerSentEvent]:
    """Every entry after ``after``, as it arrives. Ends when the server shuts down, the
    model is deleted, or (by cancellation, from sse-starlette) the client goes away."""
    watch.streams.inc()
    try:
        yield ServerSentEvent(comment=f"stats of model {name}", retry=RETRY_MS)
        last, failing = after, False
        while not shutdown.is_set():
            try:
                entries = await stats_history.wait_after(redis, prefix, name, last, block_ms)
                if not entries and not await stats_history.model_listed(redis, prefix, name):
                    return
            except UNREACHABLE as exc:
                if not failing:
                    logger.warning("stats stream of %s: Redis unreachable, retrying: %s", name, exc)
                failing = True
                with anyio.move_on_after(_REDIS_RETRY_SECONDS):
                    await shutdown.wait()
                continue
            except RedisError as exc:  # refused, not unreachable: retrying would not help
                logger.warning("stats stream of %s: Redis refused the read, ending: %s", name, exc)
                return
            failing = False
            for entry_id, fields in entries:
                last = entry_id.decode()
                data = orjson.dumps(stats_history.decode_entry((entry_id, fields))).decode()
                yield ServerSentEvent(data=data, id=last, event="stats")
    finally:
        watch.streams.dec()


@router.get(
    "/stats/stream",
    response_class=EventSourceResponse,
    response_model=None,
    dependencies=[Depends(require_read_or_token)],
    responses=_RESPONSES,
)
async def stream_stats(
    handle: ModelDep,
    registry: RegistryDep,
    settings: SettingsDep,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", description="resume after this entry (reconnects)")
    ] = None,
    after: Annotated[
        str | None,
        Query(description="start after this stats entry id (e.g. the last history entry's); unset: from now"),
    ] = None,
) -> EventSourceResponse:
    """Server-Sent Events: one `stats` event per published update, id = the Redis entry id."""
    name, prefix, redis = handle.model.name, settings.KEY_PREFIX, registry.redis
    start = _start_id(last_event_id, after)
    if start is None:
        try:
            start = await stats_history.last_id(redis, prefix, name)
        except (*UNREACHABLE, RedisError) as exc:
            raise UnavailableError(f"Redis is unreachable: cannot stream stats ({exc})") from exc
    block_ms = int(min(_BLOCK_SECONDS, settings.REDIS_TIMEOUT_SECONDS / 2) * 1000)
    shutdown = anyio.Event()
    watch = registry.telemetry.watch
    return EventSourceResponse(
        _events(redis, prefix, name, start, max(block_ms, 1), shutdown, watch),
        ping=settings.STREAM_KEEPALIVE_SECONDS,
        sep="\n",
        shutdown_event=shutdown,
        shutdown_grace_period=_BLOCK_SECONDS + 2.0,
    )
