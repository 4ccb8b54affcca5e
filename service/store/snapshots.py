"""Snapshots: the learner's whole state and the log id it includes, written (by the owner,
fenced) with the log trim and the Idempotency-Key records of the same moment in one
atomic script, so a snapshot, its records and the log after it never disagree."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from service.store import keys
from service.store.fencing import FencedWrite
from service.store.log import START_ID, next_id

SNAPSHOT_FORMAT = 2  # 1: before replicas, with the idempotency records inline (migrated)


@dataclass(frozen=True)
class Snapshot:
    """A model's persisted state as of log entry ``log_id`` (``0-0``: before any)."""

    state: bytes
    step: int
    log_id: str
    created_at: float
    updated_at: float | None
    snapshot_at: float

    def fields(self) -> dict[bytes, bytes]:
        return {
            b"format": str(SNAPSHOT_FORMAT).encode(),
            b"state": self.state,
            b"step": str(self.step).encode(),
            b"log_id": self.log_id.encode(),
            b"created_at": repr(self.created_at).encode(),
            b"updated_at": b"" if self.updated_at is None else repr(self.updated_at).encode(),
            b"snapshot_at": repr(self.snapshot_at).encode(),
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
        )


def add_snapshot(
    write: FencedWrite,
    snapshot: Snapshot,
    records_added: dict[str, bytes],
    records_removed: list[str],
) -> None:
    """Queue, on ``write``: replace the snapshot, trim the log entries it includes, and
    bring the records hash to the same moment."""
    prefix, name = write.fence.prefix, write.fence.name
    write.hset(keys.snapshot_key(prefix, name), snapshot.fields())
    if snapshot.log_id != START_ID:
        write.command("XTRIM", keys.log_key(prefix, name), "MINID", next_id(snapshot.log_id))
    idem = keys.idempotency_key(prefix, name)
    if records_removed:
        write.hdel(idem, records_removed)
    if records_added:
        write.hset(idem, records_added)


async def read_snapshot(redis: Redis, prefix: str, name: str) -> Snapshot | None:
    fields = await redis.hgetall(keys.snapshot_key(prefix, name))
    return Snapshot.from_fields(fields) if fields else None


async def read_records(redis: Redis, prefix: str, name: str) -> dict[bytes, bytes]:
    """The Idempotency-Key records as of the snapshot."""
    return await redis.hgetall(keys.idempotency_key(prefix, name))
