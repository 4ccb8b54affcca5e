"""Fenced writes: everything a model's owner writes goes through one Lua script that
first checks, inside Redis, that the owner's token still holds the model's lease.

A lease alone does not stop an owner that was paused past its lease (a GC pause,
SIGSTOP, a partition) from writing when it wakes: the store must refuse the stale
token (Kleppmann, "How to do distributed locking"). So every owner write (log appends,
snapshots and trims, stats, results, idempotency records, the lease release) is a
:class:`FencedWrite`: a list of commands on the model's keys that Redis runs atomically
only if ``HGET lease token`` still equals the owner's token.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from service.store import keys
from service.store.scripts import scripts

#: Field/value pairs per HSET (and fields per HDEL) inside a script: Lua's unpack()
#: takes at most ~8000 values, and one huge command would block Redis for long.
_CHUNK = 512


class FencedError(Exception):
    """Redis refused an owner write: the writer is not the owner (any more).

    ``reason`` is ``gone`` (the model's keys are gone: deleted, or lost by Redis),
    ``taken`` (another replica holds the lease) or ``expired`` (nobody holds it).
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"model {name}: write refused, the lease is {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class Fence:
    """An owner's right to write one model: the lease token Redis checks."""

    prefix: str
    name: str
    token: str

    @property
    def epoch(self) -> int:
        """The token is ``incarnation:epoch``; the epoch grows with every acquisition."""
        return int(self.token.rsplit(":", 1)[1])


Arg = str | bytes | int | float


class FencedWrite:
    """Commands to run on one model's keys, atomically and only under ``fence``."""

    def __init__(self, fence: Fence) -> None:
        self.fence = fence
        self._keys = [keys.lease_key(fence.prefix, fence.name), keys.meta_key(fence.prefix, fence.name)]
        self._key_index = {k: i + 1 for i, k in enumerate(self._keys)}
        self._args: list[Arg] = [fence.token]
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def command(self, name: str, key: str, *args: Arg) -> int:
        """Queue ``name key *args``; returns the index of its reply in :meth:`run`'s list."""
        index = self._key_index.get(key)
        if index is None:
            self._keys.append(key)
            index = self._key_index[key] = len(self._keys)
        self._args.extend((name, index, len(args), *args))
        self._count += 1
        return self._count - 1

    # ---------------------------------------------------------------- shorthands
    def xadd(self, key: str, fields: Mapping[bytes, bytes], *trim: Arg) -> int:
        """XADD with an auto id; ``trim`` e.g. ``("MAXLEN", "~", 1000)`` goes before the id."""
        return self.command("XADD", key, *trim, "*", *_flat(fields.items()))

    def hset(self, key: str, mapping: Mapping[Any, Any]) -> None:
        items = list(mapping.items())
        for start in range(0, len(items), _CHUNK):
            self.command("HSET", key, *_flat(items[start : start + _CHUNK]))

    def hdel(self, key: str, fields: Iterable[Arg]) -> None:
        names = list(fields)
        for start in range(0, len(names), _CHUNK):
            self.command("HDEL", key, *names[start : start + _CHUNK])

    async def run(self, redis: Redis) -> list[Any]:
        """Run every command, or none: raises :class:`FencedError` if the token lost."""
        reply = await scripts(redis).fenced(keys=self._keys, args=self._args)
        if int(reply[0]) != 1:
            reason = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
            raise FencedError(self.fence.name, reason)
        return list(reply[1:])


def _flat(items: Iterable[tuple[Any, Any]]) -> list[Arg]:
    out: list[Arg] = []
    for k, v in items:
        out.extend((k, v))
    return out
