"""Replica membership: each replica renews its entry in ``{p}:replicas`` (a sorted set
scored by expiry time on Redis's clock, so replicas on hosts whose clocks disagree still
agree on who is live) and describes itself in ``{p}:replica:{id}``."""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from service.store import keys
from service.store.scripts import scripts


def _ids(raw: list[Any]) -> list[str]:
    return sorted(r.decode() if isinstance(r, bytes) else str(r) for r in raw)


async def heartbeat(redis: Redis, prefix: str, replica: str, ttl_ms: int, info: dict[str, Any]) -> list[str]:
    """Renew this replica's membership and description; returns the live replicas."""
    live = await scripts(redis).heartbeat(keys=[keys.replicas_key(prefix)], args=[replica, ttl_ms])
    info_key = keys.replica_key(prefix, replica)
    await redis.hset(info_key, mapping={k: orjson.dumps(v) for k, v in info.items()})
    await redis.pexpire(info_key, ttl_ms)
    return _ids(live)


async def live(redis: Redis, prefix: str) -> list[str]:
    return _ids(await scripts(redis).live(keys=[keys.replicas_key(prefix)]))


async def describe(redis: Redis, prefix: str, replica: str) -> dict[str, Any]:
    raw = await redis.hgetall(keys.replica_key(prefix, replica))
    return {k.decode(): orjson.loads(v) for k, v in raw.items()}


async def leave(redis: Redis, prefix: str, replica: str) -> None:
    """Drop a replica's membership: this one's at shutdown, or another's known to be dead."""
    await redis.zrem(keys.replicas_key(prefix), replica)
    await redis.delete(keys.replica_key(prefix, replica))
