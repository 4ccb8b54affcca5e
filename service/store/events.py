"""Service-wide events (``{p}:events``, a capped stream): a model created, deleted or
released, a replica joining or leaving. Replicas block on it so that ownership moves at
once rather than at the next poll; the poll remains the fallback, so a lost event only
costs time."""

from __future__ import annotations

from redis.asyncio import Redis

from service.store import keys

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


async def last_id(redis: Redis, prefix: str) -> str:
    newest = await redis.xrevrange(keys.events_key(prefix), count=1)
    return newest[0][0].decode() if newest else "0-0"


async def wait(
    redis: Redis, prefix: str, after: str, block_ms: int
) -> tuple[str, list[tuple[str, str, str]]]:
    """Events after ``after`` (waiting up to ``block_ms``): the new cursor, and
    ``(kind, subject, replica)`` for each."""
    reply = await redis.xread({keys.events_key(prefix): after}, count=100, block=block_ms)
    if not reply:
        return after, []
    entries = reply[0][1]
    out = [
        (f[b"kind"].decode(), f.get(b"subject", b"").decode(), f.get(b"replica", b"").decode())
        for _, f in entries
    ]
    return entries[-1][0].decode(), out
