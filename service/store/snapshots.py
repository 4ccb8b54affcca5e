"""Snapshots: the learner's whole state and the log id it includes, written with the
log trim in one MULTI/EXEC, so a snapshot and the log after it never disagree."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from service.store import keys
from service.store.log import START_ID, next_id

SNAPSHOT_FORMAT = 1


@dataclass(frozen=True)
class Snapshot:
    """A model's persisted state as of log entry ``log_id`` (``0-0``: before any)."""

    state: bytes
    step: int
    log_id: str
    created_at: float
    updated_at: float | None
    snapshot_at: float
    idempotency: bytes

    def fields(self) -> dict[bytes, bytes]:
        return {
            b"format": str(SNAPSHOT_FORMAT).encode(),
            b"state": self.state,
            b"step": str(self.step).encode(),
            b"log_id": self.log_id.encode(),
            b"created_at": repr(self.created_at).encode(),
            b"updated_at": b"" if self.updated_at is None else repr(self.updated_at).encode(),
            b"snapshot_at": repr(self.snapshot_at).encode(),
            b"idempotency": self.idempotency,
        }

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> Snapshot:
        fmt = int(fields.get(b"format", b"0"))
        if fmt != SNAPSHOT_FORMAT:
            raise ValueError(f"unsupported snapshot format {fmt}")
        updated = fields.get(b"updated_at", b"")
        return cls(
            state=fields[b"state"],
            step=int(fields[b"step"]),
            log_id=fields[b"log_id"].decode(),
            created_at=float(fields[b"created_at"]),
            updated_at=float(updated) if updated else None,
            snapshot_at=float(fields[b"snapshot_at"]),
            idempotency=fields.get(b"idempotency", b"[]"),
        )


async def write_snapshot(redis: Redis, prefix: str, name: str, snapshot: Snapshot) -> None:
    """Replace the snapshot and drop the log entries it includes, atomically."""
    pipe = redis.pipeline(transaction=True)
    pipe.hset(keys.snapshot_key(prefix, name), mapping=snapshot.fields())  # type: ignore[arg-type]
    if snapshot.log_id != START_ID:
        pipe.xtrim(keys.log_key(prefix, name), minid=next_id(snapshot.log_id))
    await pipe.execute()


async def read_snapshot(redis: Redis, prefix: str, name: str) -> Snapshot | None:
    fields = await redis.hgetall(keys.snapshot_key(prefix, name))
    return Snapshot.from_fields(fields) if fields else None
