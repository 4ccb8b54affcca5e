"""Predictions waiting for their labels (``label_later``), kept in Redis under the model.

Any replica keeps a prediction it served (one script: prune the expired, refuse a
reused id, store, evict past the bound) and any replica turns labels into a learn
entry of the log (one script: check every id, mark them labelled, append the entry
carrying the stored inputs and what was served, ring the owner's bell). The owner then
applies the entry like any other learn, so a label is logged before it is applied,
applied exactly once, and replayed exactly after a crash; whether an id was labelled
is decided once, inside Redis, at append time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from service.store import keys
from service.store.log import BELL_ITEMS
from service.store.scripts import scripts

#: Label delays kept for the metrics' percentiles.
DELAYS_KEPT = 1024


@dataclass(frozen=True)
class Kept:
    """One prediction to keep: its id, its input and what was served, as JSON."""

    prediction_id: str
    x_json: bytes
    served_json: bytes


class IdExistsError(Exception):
    """A prediction id is pending or labelled already (or given twice)."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


class LabelRefusedError(Exception):
    """A label that cannot be taken: ``why`` is unknown, expired, labelled or duplicate."""

    def __init__(self, why: str, index: int) -> None:
        super().__init__(why, index)
        self.why = why
        self.index = index


def _label_keys(prefix: str, name: str) -> list[str]:
    return [keys.meta_key(prefix, name), *keys.label_keys(prefix, name)]


async def remember(
    redis: Redis,
    prefix: str,
    name: str,
    incarnation: str,
    kept: list[Kept],
    ttl_seconds: float,
    max_pending: int,
) -> Change | None:
    """Keep ``kept`` until labelled; None when the model (this incarnation) is gone.
    Raises :class:`IdExistsError` (nothing kept) when an id is taken."""
    args: list[Any] = [incarnation, str(math.ceil(ttl_seconds * 1000)), str(max_pending)]
    for k in kept:
        args.extend((k.prediction_id, k.x_json, k.served_json))
    reply = await scripts(redis).remember(keys=_label_keys(prefix, name), args=args)
    if reply is None:
        return None
    if reply[0] == b"exists":
        raise IdExistsError(int(reply[1]))
    return Change(pending=int(reply[1]), expired=int(reply[2]), evicted=int(reply[3]))


@dataclass(frozen=True)
class Change:
    """What a call did to the pending predictions: how many wait now, how many it found
    expired or evicted, and (labels) the delays of those it took, in seconds."""

    pending: int
    expired: int
    evicted: int = 0
    delays_seconds: tuple[float, ...] = ()


@dataclass(frozen=True)
class Taken:
    """The learn entry the labels became: its id, the lease holder (None: no owner),
    and whether it is a ``dup`` entry (already labelled, to be answered from the
    Idempotency-Key's record)."""

    entry_id: str
    holder: str | None
    dup: bool
    change: Change


async def take_labels(
    redis: Redis,
    prefix: str,
    name: str,
    incarnation: str,
    labels: list[tuple[str, bytes]],
    ttl_seconds: float,
    idempotency_key: str | None,
    fields: dict[bytes, bytes],
) -> Taken | None:
    """Append the learn entry of ``labels`` (``(prediction id, y as JSON)``) with the
    entry's other ``fields``; None when the model is gone. Raises
    :class:`LabelRefusedError` (nothing taken) for the first label that cannot be."""
    extra = orjson.dumps({k.decode(): v.decode() for k, v in fields.items()})
    args: list[Any] = [
        incarnation,
        str(math.ceil(ttl_seconds * 1000)),
        str(BELL_ITEMS),
        str(DELAYS_KEPT),
        idempotency_key or "",
        extra,
    ]
    for prediction_id, y_json in labels:
        args.extend((prediction_id, y_json))
    label_keys = _label_keys(prefix, name)
    reply = await scripts(redis).take_labels(
        keys=[
            *label_keys,
            keys.log_key(prefix, name),
            keys.bell_key(prefix, name),
            keys.lease_key(prefix, name),
        ],
        args=args,
    )
    if reply is None:
        return None
    status = reply[0].decode()
    if status in ("ok", "dup"):
        holder = reply[2]
        change = Change(int(reply[3]), int(reply[4]), 0, tuple(int(d) / 1000.0 for d in reply[5:]))
        return Taken(reply[1].decode(), holder.decode() if holder else None, status == "dup", change)
    raise LabelRefusedError(status, int(reply[1]))


@dataclass(frozen=True)
class LabelCounts:
    """What a model's delayed labels look like now (any replica can read it)."""

    pending: int
    labelled: int
    expired: int
    evicted: int
    delays_seconds: list[float]  # the latest, newest first

    def delay_percentile(self, q: float) -> float | None:
        if not self.delays_seconds:
            return None
        ordered = sorted(self.delays_seconds)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def to_json(self) -> dict[str, Any]:
        return {
            "pending_labels": self.pending,
            "labels_received": self.labelled,
            "labels_expired": self.expired,
            "labels_evicted": self.evicted,
            "label_delay_seconds": {
                "count": len(self.delays_seconds),
                "p50": self.delay_percentile(0.5),
                "p99": self.delay_percentile(0.99),
            },
        }


async def label_counts(redis: Redis, prefix: str, name: str, ttl_seconds: float) -> LabelCounts:
    """Pending predictions (those past their wait count as expired even before they are
    pruned), counters and recent delays, in one round trip."""
    cutoff = int((time.time() - ttl_seconds) * 1000)
    pending_at = keys.pending_at_key(prefix, name)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(pending_at)
        pipe.zcount(pending_at, "-inf", cutoff)
        pipe.hgetall(keys.label_counts_key(prefix, name))
        pipe.lrange(keys.label_delays_key(prefix, name), 0, -1)
        total, stale, counts, delays = await pipe.execute()
    counters = {k.decode(): int(v) for k, v in counts.items()}
    return LabelCounts(
        pending=int(total) - int(stale),
        labelled=counters.get("labelled", 0),
        expired=counters.get("expired", 0) + int(stale),
        evicted=counters.get("evicted", 0),
        delays_seconds=[int(d) / 1000.0 for d in delays],
    )
