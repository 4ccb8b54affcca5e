"""Service-wide events (``{p}:events``, a capped stream): a model created, deleted or
released, a replica joining or leaving. Replicas block on it so that ownership moves at
once rather than at the next poll; the poll remains the fallback, so a lost event only
costs time."""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.store import keys, streams
from service.store.connection import UNREACHABLE

logger = logging.getLogger(__name__)

_CAP = 1000

CREATED = "created"
DELETED = "deleted"
RELEASED = "released"
JOINED = "joined"
LEFT = "left"
DATA_LOSS = "data-loss"


async def publish(redis: Redis, prefix: str, kind: str, subject: str, replica: str) -> None:
    await redis.xadd(
        keys.events_key(prefix),
        {b"kind": kind.encode(), b"subject": subject.encode(), b"replica": replica.encode()},
        maxlen=_CAP,
        approximate=True,
    )


async def announce(redis: Redis, prefix: str, kind: str, subject: str, replica: str) -> None:
    """:func:`publish`, best effort: an event that cannot be written costs the others a
    poll interval, never a request."""
    try:
        await publish(redis, prefix, kind, subject, replica)
    except (*UNREACHABLE, RedisError) as exc:
        logger.warning("could not publish the %s event of %s: %s", kind, subject, exc)


async def last_id(redis: Redis, prefix: str) -> str:
    return await streams.newest_id(redis, keys.events_key(prefix))


async def wait(
    redis: Redis, prefix: str, after: str, block_ms: int
) -> tuple[str, list[tuple[str, str, str]]]:
    """Events after ``after`` (waiting up to ``block_ms``): the new cursor, and
    ``(kind, subject, replica)`` for each."""
    entries = await streams.read_after(redis, keys.events_key(prefix), after, block_ms, 100)
    if not entries:
        return after, []
    out = [
        (f[b"kind"].decode(), f.get(b"subject", b"").decode(), f.get(b"replica", b"").decode())
        for _, f in entries
    ]
    return entries[-1][0].decode(), out
