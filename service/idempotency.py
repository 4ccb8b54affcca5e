"""Idempotency-Key records: a retried learn that was already applied gets its original
answer instead of being applied twice, through any replica.

A model remembers each keyed request for ``window_ms`` (``ONLINENORM_IDEMPOTENCY_SECONDS``),
measured between the log times (Redis's clock, in the entry ids) of the original and
of the retry, and within at most ``max_bytes`` of records; past that bound the oldest are
forgotten early (a retry of one is applied as a new request).

Whether a logged request is a retry is decided when the owner applies it, from the
records and the entry's log time alone, so replaying the same log from the same
snapshot decides the same way: a retry that reached another replica, or a new owner
after a failover, is answered exactly as the first owner would have answered it. The
records are persisted with each snapshot (the ``{p}:model:{name}:idem`` hash, written
in the same atomic script); the records of later entries are rebuilt from the log.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from dataclasses import dataclass

import orjson

from service.live import Outcome
from service.store.log import parse_id

#: Printable ASCII without spaces, like the header values clients generate (UUIDs...).
KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")
#: Marks a record migrated from the layout before replicas (hashed without the kind).
LEGACY_FINGERPRINT = "legacy:"


def fingerprint(kind: str, samples_json: bytes) -> str:
    """Identifies a request, so a key reused for other samples (or the other endpoint) is refused."""
    return hashlib.blake2b(kind.encode() + b"\0" + samples_json, digest_size=16).hexdigest()


@dataclass(frozen=True)
class Record:
    """A keyed request's outcome, and the log entry that first carried the key."""

    entry_id: str
    fingerprint: str
    outcome: Outcome

    @property
    def time_ms(self) -> int:
        return parse_id(self.entry_id)[0]

    def matches(self, kind: str, samples_json: bytes) -> bool:
        """Whether a retry with this key is the same request (same endpoint, same samples)."""
        if self.fingerprint.startswith(LEGACY_FINGERPRINT):  # hashed without the kind, which the outcome has
            legacy = hashlib.blake2b(samples_json, digest_size=16).hexdigest()
            return self.outcome.kind == kind and self.fingerprint == LEGACY_FINGERPRINT + legacy
        return self.fingerprint == fingerprint(kind, samples_json)

    def pack(self) -> bytes:
        return orjson.dumps([self.entry_id, self.fingerprint, self.outcome.to_json()])

    @classmethod
    def unpack(cls, data: bytes) -> Record:
        entry_id, fp, outcome = orjson.loads(data)
        return cls(entry_id, fp, Outcome.from_json(outcome))


class IdempotencyRecords:
    """The keyed outcomes of one model, oldest first, bounded by age and by bytes."""

    def __init__(self, window_ms: int, max_bytes: int) -> None:
        self.window_ms = window_ms
        self.max_bytes = max_bytes
        self._records: OrderedDict[str, tuple[Record, bytes]] = OrderedDict()
        self._bytes = 0
        self.evicted_early = 0  # forgotten for the byte bound, before their window ended
        # What changed since the last snapshot, to bring the Redis hash to the same point.
        self._added: set[str] = set()
        self._removed: set[str] = set()

    def __len__(self) -> int:
        return len(self._records)

    @property
    def enabled(self) -> bool:
        return self.window_ms > 0

    def lookup(self, key: str, at_ms: int) -> Record | None:
        """The record of ``key`` if it is still remembered at log time ``at_ms``."""
        found = self._records.get(key)
        if found is None or at_ms - found[0].time_ms > self.window_ms:
            return None
        return found[0]

    def put(self, key: str, record: Record) -> None:
        """Remember ``record`` (at its entry's log time), forgetting what is due."""
        if not self.enabled:
            return
        self._drop(key)
        packed = record.pack()
        self._records[key] = (record, packed)
        self._bytes += len(packed)
        self._added.add(key)
        self._removed.discard(key)
        self._expire(record.time_ms)

    def _drop(self, key: str) -> None:
        old = self._records.pop(key, None)
        if old is not None:
            self._bytes -= len(old[1])
            self._added.discard(key)
            self._removed.add(key)

    def _expire(self, now_ms: int) -> None:
        while self._records:
            key, (oldest, _) = next(iter(self._records.items()))
            if now_ms - oldest.time_ms > self.window_ms:
                self._drop(key)
            elif self._bytes > self.max_bytes and len(self._records) > 1:
                self._drop(key)
                self.evicted_early += 1
            else:
                return

    # ------------------------------------------------------------- persistence
    def changes(self) -> tuple[dict[str, bytes], list[str]]:
        """Records added and keys removed since :meth:`mark_persisted`."""
        added = {k: self._records[k][1] for k in self._added}
        return added, sorted(self._removed)

    def mark_persisted(self) -> None:
        self._added.clear()
        self._removed.clear()

    def mark_all_unpersisted(self) -> None:
        """Everything must be written again (Redis lost the hash)."""
        self._added = set(self._records)
        self._removed.clear()

    @classmethod
    def loads(cls, fields: dict[bytes, bytes], window_ms: int, max_bytes: int) -> IdempotencyRecords:
        """Records as the snapshot's hash holds them, in log order."""
        records = cls(window_ms, max_bytes)
        unpacked = [(k.decode(), Record.unpack(v)) for k, v in fields.items()]
        unpacked.sort(key=lambda item: (parse_id(item[1].entry_id), item[0]))
        for key, record in unpacked:
            packed = record.pack()
            records._records[key] = (record, packed)
            records._bytes += len(packed)
        return records
