"""The two stream reads every tail of the service does (the stats stream, the results
stream, the events stream): where "from now" starts, and what came after a cursor."""

from __future__ import annotations

from redis.asyncio import Redis

#: A stream entry as redis-py returns it: ``(id, {field: value})``.
Entry = tuple[bytes, dict[bytes, bytes]]


async def newest_id(redis: Redis, key: str) -> str:
    """The newest entry's id, or ``0-0`` for an empty (or missing) stream."""
    newest = await redis.xrevrange(key, count=1)
    return newest[0][0].decode() if newest else "0-0"


async def read_after(redis: Redis, key: str, after: str, block_ms: int, count: int) -> list[Entry]:
    """Up to ``count`` entries after ``after``, waiting up to ``block_ms`` for one
    (XREAD BLOCK); empty when none came. Keep ``block_ms`` under the socket timeout."""
    reply = await redis.xread({key: after}, count=count, block=block_ms)
    return list(reply[0][1]) if reply else []  # RESP2: [[key, [(id, fields), ...]]]
