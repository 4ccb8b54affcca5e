"""Model leases: who owns a model (applies its steps), for how long, with which token.

A lease is a hash ``{token, replica}`` with a TTL. Acquiring one increments the model's
fencing epoch, so every owner's token differs from every earlier one; renewing checks
the token; releasing is a fenced delete.
"""

from __future__ import annotations

from redis.asyncio import Redis

from service.store import keys
from service.store.fencing import Fence, FencedWrite
from service.store.scripts import scripts


class ModelGone(Exception):
    """The model (this incarnation of it) no longer exists in Redis."""


async def acquire(
    redis: Redis,
    prefix: str,
    name: str,
    incarnation: str,
    replica: str,
    lease_ms: int,
    replace_holder: str = "",
) -> Fence | str:
    """Take the lease: a :class:`Fence` if acquired, else the holder's replica id.
    ``replace_holder`` names a holder known to be dead, whose lease may be taken at once.
    Raises :class:`ModelGone`."""
    status, value = await scripts(redis).acquire(
        keys=[keys.lease_key(prefix, name), keys.meta_key(prefix, name)],
        args=[replica, lease_ms, incarnation, replace_holder],
    )
    if int(status) < 0:
        raise ModelGone(name)
    text = value.decode() if isinstance(value, bytes) else str(value)
    return Fence(prefix, name, text) if int(status) == 1 else text


async def renew(redis: Redis, fence: Fence, lease_ms: int) -> str:
    """Extend the lease: ``ok``, or why ``fence`` no longer holds it (``gone``, ``taken``,
    ``expired``: see :class:`~service.store.fencing.FencedError`)."""
    reply = await scripts(redis).renew(
        keys=[keys.lease_key(fence.prefix, fence.name), keys.meta_key(fence.prefix, fence.name)],
        args=[fence.token, lease_ms],
    )
    return reply.decode() if isinstance(reply, bytes) else str(reply)


async def release(redis: Redis, fence: Fence) -> None:
    """Give the lease up (fenced: only the holder's token can)."""
    write = FencedWrite(fence)
    write.command("DEL", keys.lease_key(fence.prefix, fence.name))
    await write.run(redis)


async def holder(redis: Redis, prefix: str, name: str) -> str | None:
    """The replica that holds the lease now, if any."""
    raw = await redis.hget(keys.lease_key(prefix, name), "replica")
    return raw.decode() if raw is not None else None
