"""Idempotency-Key records: a retried learn that was already applied gets its original
answer instead of being applied twice.

A model remembers the outcome of its last ``capacity`` keyed requests. The records are
rebuilt by replaying the log and persisted in each snapshot, so they survive restarts
exactly like the model does.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from dataclasses import dataclass

import orjson

from service.live import Outcome
from service.store.log import LearnEntry

#: Printable ASCII without spaces, like the header values clients generate (UUIDs...).
KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")


def fingerprint(samples_json: bytes) -> str:
    """Identifies a request's samples, so a key reused for other samples is refused."""
    return hashlib.blake2b(samples_json, digest_size=16).hexdigest()


@dataclass(frozen=True)
class Record:
    fingerprint: str
    outcome: Outcome


class IdempotencyRecords:
    """The most recent keyed outcomes of one model, oldest evicted first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._records: OrderedDict[str, Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: str) -> Record | None:
        return self._records.get(key)

    def put(self, key: str, record: Record) -> None:
        if self.capacity == 0:
            return
        self._records[key] = record
        self._records.move_to_end(key)
        while len(self._records) > self.capacity:
            self._records.popitem(last=False)

    def put_replayed(self, entries: list[LearnEntry], outcomes: list[Outcome]) -> None:
        """The records of replayed log entries: their keys and samples are in the log."""
        for entry, outcome in zip(entries, outcomes, strict=True):
            if entry.idempotency_key is not None:
                self.put(entry.idempotency_key, Record(fingerprint(entry.samples_json), outcome))

    def dumps(self) -> bytes:
        return orjson.dumps([[k, r.fingerprint, r.outcome.to_json()] for k, r in self._records.items()])

    @classmethod
    def loads(cls, data: bytes, capacity: int) -> IdempotencyRecords:
        records = cls(capacity)
        for key, fp, outcome in orjson.loads(data or b"[]"):
            records.put(key, Record(fp, Outcome.from_json(outcome)))
        return records
