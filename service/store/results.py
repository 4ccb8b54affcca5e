"""Outcomes the owner publishes for requests other replicas wait on: the stream
``{p}:model:{name}:results``, one entry ``{req, body}`` per applied log entry that came
from another replica, trimmed by age. Waiters find theirs by the nonce ``req`` they put
in the log entry; a new owner that replays the log publishes them again, so a waiter
whose owner died still gets its answer."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from service.store import keys, streams
from service.store.fencing import FencedWrite

#: How long results are kept: longer than any waiter waits (ONLINENORM_REMOTE_TIMEOUT_SECONDS).
RETENTION_MS = 10 * 60 * 1000
_READ_CHUNK = 500


def add_results(write: FencedWrite, results: list[tuple[str, bytes]]) -> None:
    """Queue, on ``write``: publish ``(req, body)`` pairs and trim results older than the
    retention (by this host's clock: a few seconds of skew do not matter here)."""
    if not results:
        return
    key = keys.results_key(write.fence.prefix, write.fence.name)
    for req, body in results:
        write.xadd(key, {b"req": req.encode(), b"body": body})
    write.command("XTRIM", key, "MINID", "~", f"{int(time.time() * 1000) - RETENTION_MS}-0")


async def last_id(redis: Redis, prefix: str, name: str) -> str:
    return await streams.newest_id(redis, keys.results_key(prefix, name))


async def wait(
    redis: Redis, prefix: str, name: str, after: str, block_ms: int
) -> tuple[str, list[tuple[str, bytes]]]:
    """Results after ``after`` (waiting up to ``block_ms`` for one): the new cursor and
    the ``(req, body)`` pairs."""
    entries = await streams.read_after(redis, keys.results_key(prefix, name), after, block_ms, _READ_CHUNK)
    if not entries:
        return after, []
    return entries[-1][0].decode(), [(f[b"req"].decode(), f[b"body"]) for _, f in entries]


async def read_since(redis: Redis, prefix: str, name: str, since_ms: int) -> list[tuple[str, bytes]]:
    """Every result published since ``since_ms`` (for waiters that start late)."""
    out: list[tuple[str, bytes]] = []
    cursor = f"{max(0, since_ms)}-0"
    first = True
    while True:
        chunk = await redis.xrange(
            keys.results_key(prefix, name), min=cursor if first else f"({cursor}", max="+", count=_READ_CHUNK
        )
        first = False
        out.extend((f[b"req"].decode(), f[b"body"]) for _, f in chunk)
        if len(chunk) < _READ_CHUNK:
            return out
        cursor = chunk[-1][0].decode()
