"""The write-ahead log: a Redis stream per model, one entry per accepted learn request.

A learn entry holds the request's samples as JSON ``[[x, y], ...]``, its kind
(``one`` or ``batch``: the shape of its answer) and its ``Idempotency-Key`` if any.
A ``rollback`` entry records that an earlier learn entry had a non-finite step: only
its first ``applied`` samples took effect. Replay honours it, so recovery does not
depend on the failure reproducing bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

LEARN = b"learn"
ROLLBACK = b"rollback"
#: The id before every entry: replay "after 0-0" reads the whole stream.
START_ID = "0-0"
_READ_CHUNK = 1000


@dataclass(frozen=True)
class LearnEntry:
    """One logged learn request."""

    id: str
    kind: str
    samples_json: bytes
    idempotency_key: str | None

    @property
    def samples(self) -> list[Any]:
        """``[[x, y], ...]``."""
        return orjson.loads(self.samples_json)


@dataclass(frozen=True)
class Rollback:
    """A learn entry stopped at a non-finite step: only ``applied`` samples took effect."""

    applied: int
    error: str


def learn_fields(samples_json: bytes, kind: str, idempotency_key: str | None) -> dict[bytes, bytes]:
    """The stream fields of a learn entry; ``samples_json`` is ``[[x, y], ...]`` as JSON."""
    fields = {b"op": LEARN, b"kind": kind.encode(), b"samples": samples_json}
    if idempotency_key is not None:
        fields[b"ikey"] = idempotency_key.encode()
    return fields


async def append_group(redis: Redis, key: str, entries: list[dict[bytes, bytes]]) -> list[str]:
    """Log many entries in one round trip, all or none (MULTI/EXEC); returns their ids.

    One entry is one XADD, atomic by itself. On a connection error the outcome is
    unknown: the caller must re-read the log after its last applied id before trusting
    its view again.
    """
    if len(entries) == 1:
        ids = [await redis.xadd(key, entries[0])]  # type: ignore[arg-type]
    else:
        pipe = redis.pipeline(transaction=True)
        for fields in entries:
            pipe.xadd(key, fields)  # type: ignore[arg-type]
        ids = await pipe.execute()
    return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]


async def append_rollback(redis: Redis, key: str, ref: str, rollback: Rollback) -> str:
    """Record that entry ``ref`` applied only its first ``rollback.applied`` samples."""
    fields = {
        b"op": ROLLBACK,
        b"ref": ref.encode(),
        b"applied": str(rollback.applied).encode(),
        b"error": rollback.error.encode(),
    }
    entry_id = await redis.xadd(key, fields)  # type: ignore[arg-type]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


async def read_after(redis: Redis, key: str, after_id: str) -> tuple[list[LearnEntry], dict[str, Rollback]]:
    """Every learn entry after ``after_id`` in log order, and the rollbacks recorded
    for them (by learn entry id)."""
    entries: list[LearnEntry] = []
    rollbacks: dict[str, Rollback] = {}
    cursor = after_id
    while True:
        chunk = await redis.xrange(key, min=f"({cursor}", max="+", count=_READ_CHUNK)
        for raw_id, fields in chunk:
            entry_id = raw_id.decode()
            op = fields.get(b"op")
            if op == LEARN:
                ikey = fields.get(b"ikey")
                entries.append(
                    LearnEntry(
                        id=entry_id,
                        kind=fields[b"kind"].decode(),
                        samples_json=fields[b"samples"],
                        idempotency_key=ikey.decode() if ikey is not None else None,
                    )
                )
            elif op == ROLLBACK:
                rollbacks[fields[b"ref"].decode()] = Rollback(
                    applied=int(fields[b"applied"]), error=fields.get(b"error", b"").decode()
                )
            else:
                raise ValueError(f"unknown log entry {entry_id} in {key}: op={op!r}")
        if len(chunk) < _READ_CHUNK:
            return entries, rollbacks
        cursor = chunk[-1][0].decode()


def parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def next_id(entry_id: str) -> str:
    """The smallest id after ``entry_id``: the MINID that trims everything up to it."""
    ms, seq = parse_id(entry_id)
    return f"{ms}-{seq + 1}"
