"""The write-ahead log: a Redis stream per model, one entry per accepted request, in the
one order every replica agrees on. It is also the queue: a replica that is not the
model's owner appends the learns it receives, and the owner applies them in log order.

Entries:

* ``learn``: a request's samples as JSON ``[[x, y], ...]``, its ``kind`` (``one`` or
  ``batch``: the shape of its answer), its ``Idempotency-Key`` if any, the replica that
  appended it (``origin``) and a nonce (``req``) under which the owner publishes its
  outcome for whoever waits on it.
  A learn made of labels (``label``/``labels``: predictions made with ``label_later``)
  carries the stored inputs in ``samples`` like any other, plus ``served`` (what each
  prediction answered, which the metrics score) and ``request`` (the labels as sent,
  ``[[prediction_id, y], ...]``, which an Idempotency-Key's record fingerprints); a
  ``dup`` one repeats labels already taken, to be answered from that record alone.
* ``sync``: a no-op a replica appends when it needs the owner's current state; the
  owner answers it with a fresh snapshot.
* ``rollback``: an earlier learn entry applied only its first ``applied`` samples (a
  non-finite step, or a step that raised). Replay honours it, so recovery does not
  depend on the failure reproducing.
"""

from __future__ import annotations

import itertools
import os
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from service.store import keys
from service.store.scripts import scripts

LEARN = b"learn"
SYNC = b"sync"
ROLLBACK = b"rollback"
#: The id before every entry: replay "after 0-0" reads the whole stream.
START_ID = "0-0"
_READ_CHUNK = 1000


@dataclass(frozen=True)
class LogEntry:
    """One logged request: a learn (``samples_json`` set) or a sync."""

    id: str
    op: bytes
    kind: str
    samples_json: bytes
    idempotency_key: str | None
    origin: str
    req: str
    served: bytes = b"[]"
    request: bytes = b""
    dup: bool = False

    @property
    def fingerprinted(self) -> bytes:
        """What an Idempotency-Key's record is matched against: a label request's labels,
        any other learn's samples."""
        return self.request or self.samples_json

    @property
    def samples(self) -> list[Any]:
        """``[[x, y], ...]``."""
        return orjson.loads(self.samples_json)

    @property
    def time_ms(self) -> int:
        """When Redis appended it (its clock): what idempotency windows are measured in."""
        return parse_id(self.id)[0]


@dataclass(frozen=True)
class Rollback:
    """A learn entry that applied only its first ``applied`` samples, and why."""

    applied: int
    error: str


_nonces = itertools.count()
_nonce_prefix = uuid.uuid4().hex[:16]


def _new_prefix() -> None:  # a forked child must not repeat its parent's nonces
    global _nonce_prefix
    _nonce_prefix = uuid.uuid4().hex[:16]


os.register_at_fork(after_in_child=_new_prefix)


def new_req() -> str:
    """A fresh nonce for an entry: its outcome is published under it. A random prefix
    per process and a counter: unique, and cheaper than a uuid4 per request."""
    return f"{_nonce_prefix}{next(_nonces):x}"


def learn_fields(
    samples_json: bytes, kind: str, idempotency_key: str | None, origin: str, req: str
) -> dict[bytes, bytes]:
    """The stream fields of a learn entry; ``samples_json`` is ``[[x, y], ...]`` as JSON."""
    fields = {
        b"op": LEARN,
        b"kind": kind.encode(),
        b"samples": samples_json,
        b"origin": origin.encode(),
        b"req": req.encode(),
    }
    if idempotency_key is not None:
        fields[b"ikey"] = idempotency_key.encode()
    return fields


def label_fields(kind: str, request_json: bytes, origin: str, req: str) -> dict[bytes, bytes]:
    """The fields of a labels entry other than those the label script adds (``samples``,
    ``served``, ``ikey``, ``dup``)."""
    return {
        b"op": LEARN,
        b"kind": kind.encode(),
        b"request": request_json,
        b"origin": origin.encode(),
        b"req": req.encode(),
    }


def sync_fields(origin: str, req: str) -> dict[bytes, bytes]:
    return {b"op": SYNC, b"origin": origin.encode(), b"req": req.encode()}


def rollback_fields(ref: str, rollback: Rollback) -> dict[bytes, bytes]:
    return {
        b"op": ROLLBACK,
        b"ref": ref.encode(),
        b"applied": str(rollback.applied).encode(),
        b"error": rollback.error.encode(),
    }


def entry_from_fields(entry_id: str, fields: dict[bytes, bytes]) -> LogEntry | tuple[str, Rollback]:
    """A learn or sync entry, or ``(ref, rollback)`` for a rollback record."""
    op = fields.get(b"op")
    if op in (LEARN, SYNC):
        ikey = fields.get(b"ikey")
        return LogEntry(
            id=entry_id,
            op=op,
            kind=fields.get(b"kind", b"").decode(),
            samples_json=fields.get(b"samples", b"[]"),
            idempotency_key=ikey.decode() if ikey is not None else None,
            origin=fields.get(b"origin", b"").decode(),
            req=fields.get(b"req", b"").decode(),
            served=fields.get(b"served", b"[]"),
            request=fields.get(b"request", b""),
            dup=fields.get(b"dup") == b"1",
        )
    if op == ROLLBACK:
        rollback = Rollback(applied=int(fields[b"applied"]), error=fields.get(b"error", b"").decode())
        return fields[b"ref"].decode(), rollback
    raise ValueError(f"unknown log entry {entry_id}: op={op!r}")


def fields_from_flat(flat: list[Any]) -> dict[bytes, bytes]:
    """A stream entry's fields as a Lua script returns them: ``[f1, v1, f2, v2, ...]``."""
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


@dataclass
class LogRead:
    """Entries read from the log, in order, with the rollbacks recorded for them."""

    entries: list[LogEntry]
    rollbacks: dict[str, Rollback]
    last_id: str  # the last id read, rollback records included ('' when nothing was read)

    def add(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        parsed = entry_from_fields(entry_id, fields)
        if isinstance(parsed, LogEntry):
            self.entries.append(parsed)
        else:
            self.rollbacks[parsed[0]] = parsed[1]
        self.last_id = entry_id


def parse_raw_entries(raw: list[Any]) -> LogRead:
    """XRANGE's reply as a Lua script returns it: ``[[id, [f1, v1, ...]], ...]``."""
    read = LogRead([], {}, "")
    for raw_id, flat in raw:
        read.add(raw_id.decode(), fields_from_flat(flat))
    return read


async def read_after(redis: Redis, key: str, after_id: str) -> LogRead:
    """Every entry after ``after_id``, in log order, with the rollbacks recorded for them."""
    read = LogRead([], {}, "")
    cursor = after_id
    while True:
        chunk = await redis.xrange(key, min=f"({cursor}", max="+", count=_READ_CHUNK)
        for raw_id, fields in chunk:
            read.add(raw_id.decode(), fields)
        if len(chunk) < _READ_CHUNK:
            return read
        cursor = chunk[-1][0].decode()


#: Bell items kept for an owner that is not reading them (it falls back to the log).
BELL_ITEMS = 1000


@dataclass(frozen=True)
class BellItem:
    """An entry another replica appended, as its bell carries it: ``prev`` is the id of
    the entry just before it in the log when it was appended (``''``: none left)."""

    prev: str
    entry: LogEntry


def parse_bell_item(raw: bytes) -> BellItem:
    prev, entry_id, *flat = orjson.loads(raw)
    fields = {flat[i].encode(): flat[i + 1].encode() for i in range(0, len(flat), 2)}
    entry = entry_from_fields(entry_id, fields)
    assert isinstance(entry, LogEntry)
    return BellItem(prev, entry)


def follow_bell(items: list[BellItem], last_id: str) -> list[LogEntry] | None:
    """The entries after ``last_id`` from bell items, if they follow it without a gap
    (each one's ``prev`` the one before it, the first one's ``last_id``, or ``''``: the
    log held nothing unapplied); None if the log must be read instead. An empty
    ``prev`` is safe because only applied entries are ever trimmed from the log."""
    out: list[LogEntry] = []
    expected = last_id
    for item in items:
        if parse_id(item.entry.id) <= parse_id(expected):
            continue  # applied already (read with a group of this owner's own)
        if item.prev != expected and not (item.prev == "" and not out):
            return None
        out.append(item.entry)
        expected = item.entry.id
    return out


async def append_remote(
    redis: Redis, prefix: str, name: str, incarnation: str, fields: dict[bytes, bytes]
) -> tuple[str, str | None] | None:
    """Append one entry from any replica and wake the owner: ``(entry id, lease holder)``,
    or None when the model (this incarnation of it) no longer exists."""
    args: list[bytes | str] = [incarnation, str(BELL_ITEMS)]
    for k, v in fields.items():
        args.extend((k, v))
    reply = await scripts(redis).append(
        keys=[
            keys.meta_key(prefix, name),
            keys.log_key(prefix, name),
            keys.bell_key(prefix, name),
            keys.lease_key(prefix, name),
        ],
        args=args,
    )
    if reply is None:
        return None
    entry_id, holder = reply
    return entry_id.decode(), holder.decode() if holder else None


def parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def next_id(entry_id: str) -> str:
    """The smallest id after ``entry_id``: the MINID that trims everything up to it."""
    ms, seq = parse_id(entry_id)
    return f"{ms}-{seq + 1}"


def later(a: str, b: str) -> str:
    """The later of two entry ids (``''`` counts as before every id)."""
    if not a:
        return b
    if not b:
        return a
    return a if parse_id(a) >= parse_id(b) else b
