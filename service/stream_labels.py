"""Stream steps that wait for their label (``label_later`` on a stateful rnn's step).

A late label learns by truncated BPTT over the window of its own time step, as it was
when the step arrived (:meth:`model.learner.OnlineLearner.stream_learn`), so the window
must be kept until the label comes. Only the model's writer has it, so, unlike a plain
prediction's input (kept in Redis by any replica, :mod:`service.store.pending`), it is
kept here, in the model's memory and snapshots, and every decision about it is made by
applying the log: whether an id is new (409 if not), whether a label finds its step
(404 if unknown, evicted or expired; 409 if labelled already), what expires and what is
evicted. Each rule is judged at the log time of the entry being applied, so the owner,
a follower and a replica replaying the log after a crash decide the same, and a window
and its served prediction are restored exactly.

Bounds, per model: a step waits ``ONLINENORM_LABEL_TTL_SECONDS`` (then a label for it
is 404 expired) and at most ``ONLINENORM_MAX_PENDING_STREAM_LABELS`` wait at once (a
new one past the bound evicts the oldest; its label is then 404). Labelled ids are
remembered for the TTL, so a label sent twice, or an id used again, is 409.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from model.stream_state import StreamState
from service.store.pending import DELAYS_KEPT, LabelCounts

#: Why an id was refused: an HTTP status and a phrase.
REFUSALS = {
    "used": 409,
    "duplicate": 409,
    "labelled": 409,
    "unknown": 404,
    "expired": 404,
}


class LabelIdRefused(Exception):
    """The entry's ``index``-th id cannot be used (``why``: a key of :data:`REFUSALS`);
    nothing of the entry was applied."""

    def __init__(self, why: str, index: int, prediction_id: str) -> None:
        super().__init__(why, index, prediction_id)
        self.why = why
        self.index = index
        self.prediction_id = prediction_id

    @property
    def status(self) -> int:
        return REFUSALS[self.why]


@dataclass(frozen=True)
class Awaiting:
    """One step waiting for its label: the window that made the prediction, what was
    served (``stream``, ``t``, ``prediction``, ``probabilities``?, ``step``), and the
    log time of the step."""

    state: StreamState
    served: dict[str, Any]
    at_ms: int


@dataclass
class LabelChange:
    """What one entry did to the waiting steps (for the Prometheus series)."""

    pending: int = 0
    expired: int = 0
    evicted: int = 0
    delays_seconds: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "expired": self.expired,
            "evicted": self.evicted,
            "delays": self.delays_seconds,
        }


class AwaitingLabels:
    """Prediction id -> :class:`Awaiting`, oldest first; labelled ids, oldest first."""

    def __init__(self, ttl_ms: int, max_pending: int) -> None:
        self.ttl_ms = ttl_ms
        self.max_pending = max_pending
        self._pending: OrderedDict[str, Awaiting] = OrderedDict()
        self._labelled: OrderedDict[str, int] = OrderedDict()
        self.labelled = 0
        self.expired = 0
        self.evicted = 0
        self.delays: deque[float] = deque(maxlen=DELAYS_KEPT)  # newest last

    def __len__(self) -> int:
        return len(self._pending)

    def _live(self, at_ms: int, now_ms: int) -> bool:
        return at_ms > now_ms - self.ttl_ms

    # ------------------------------------------------------------- the writer's rules
    def sweep(self, now_ms: int, change: LabelChange | None = None) -> None:
        """Forget the steps whose wait ended, and labelled ids older than the TTL."""
        while self._pending:
            pid, waiting = next(iter(self._pending.items()))
            if self._live(waiting.at_ms, now_ms):
                break
            del self._pending[pid]
            self.expired += 1
            if change is not None:
                change.expired += 1
        while self._labelled:
            pid, at_ms = next(iter(self._labelled.items()))
            if self._live(at_ms, now_ms):
                break
            del self._labelled[pid]

    def check_new(self, ids: list[tuple[int, str]], now_ms: int) -> None:
        """``ids`` (``(index in the entry, id)``) may each make a new waiting step:
        :class:`LabelIdRefused` (``used``, ``duplicate``) for the first that may not."""
        seen: set[str] = set()
        for index, pid in ids:
            if pid in seen:
                raise LabelIdRefused("duplicate", index, pid)
            seen.add(pid)
            waiting = self._pending.get(pid)
            labelled_at = self._labelled.get(pid)
            if (waiting is not None and self._live(waiting.at_ms, now_ms)) or (
                labelled_at is not None and self._live(labelled_at, now_ms)
            ):
                raise LabelIdRefused("used", index, pid)

    def add(self, pid: str, waiting: Awaiting, change: LabelChange) -> None:
        """Keep a step until its label; past the bound the oldest is evicted."""
        self._pending.pop(pid, None)  # an expired one, not yet swept
        self._pending[pid] = waiting
        self._labelled.pop(pid, None)
        while len(self._pending) > self.max_pending:
            self._pending.popitem(last=False)
            self.evicted += 1
            change.evicted += 1

    def check_labels(self, ids: list[str], now_ms: int) -> list[Awaiting]:
        """The waiting steps of ``ids``, or :class:`LabelIdRefused` (``duplicate``,
        ``expired``, ``labelled``, ``unknown``) for the first that has none."""
        seen: set[str] = set()
        found = []
        for index, pid in enumerate(ids):
            if pid in seen:
                raise LabelIdRefused("duplicate", index, pid)
            seen.add(pid)
            waiting = self._pending.get(pid)
            if waiting is None:
                labelled_at = self._labelled.get(pid)
                live = labelled_at is not None and self._live(labelled_at, now_ms)
                raise LabelIdRefused("labelled" if live else "unknown", index, pid)
            if not self._live(waiting.at_ms, now_ms):
                raise LabelIdRefused("expired", index, pid)
            found.append(waiting)
        return found

    def take(self, pid: str, now_ms: int, change: LabelChange) -> None:
        """``pid``'s label was learned: it is labelled from now on."""
        waiting = self._pending.pop(pid)
        self._labelled[pid] = now_ms
        self.labelled += 1
        delay = max(0, now_ms - waiting.at_ms) / 1000.0
        self.delays.append(delay)
        change.delays_seconds.append(delay)

    # --------------------------------------------------------------------- readers
    def counts(self, now_ms: int) -> LabelCounts:
        """The figures of the model's metrics, as a reader sees them at ``now_ms``."""
        live = sum(1 for w in self._pending.values() if self._live(w.at_ms, now_ms))
        return LabelCounts(
            pending=live,
            labelled=self.labelled,
            expired=self.expired + len(self._pending) - live,
            evicted=self.evicted,
            delays_seconds=list(reversed(self.delays)),
        )

    def nbytes(self) -> int:
        """Tensor bytes of the kept windows (windows of one stream share their steps in
        memory; this counts each in full, as a snapshot holds them)."""
        return sum(w.state.nbytes for w in self._pending.values())

    # --------------------------------------------------------------- serialization
    def items(self) -> list[tuple[str, Awaiting]]:
        return list(self._pending.items())

    def to_meta(self) -> dict[str, Any]:
        """Everything but the windows, as JSON (the windows go with the stream tensors)."""
        return {
            "labelled_ids": [[pid, at] for pid, at in self._labelled.items()],
            "labelled": self.labelled,
            "expired": self.expired,
            "evicted": self.evicted,
            "delays": list(self.delays),
        }

    def replace(self, pending: list[tuple[str, Awaiting]], meta: dict[str, Any] | None) -> None:
        """Load :meth:`items` and :meth:`to_meta` as a snapshot kept them (``meta`` None:
        a snapshot from before late stream labels: nothing waits)."""
        meta = meta or {}
        self._pending = OrderedDict(pending)
        self._labelled = OrderedDict((str(pid), int(at)) for pid, at in meta.get("labelled_ids", []))
        self.labelled = int(meta.get("labelled", 0))
        self.expired = int(meta.get("expired", 0))
        self.evicted = int(meta.get("evicted", 0))
        self.delays = deque((float(d) for d in meta.get("delays", [])), maxlen=DELAYS_KEPT)
