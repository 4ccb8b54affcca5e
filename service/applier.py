"""What applying one log entry does to a model, decided from the log alone.

The live owner and a replica replaying the log after a failover call the same
:func:`apply_entry` on the same entries in the same order, from the same snapshot and
records, so they reach the same state and answer every request the same way:

* a ``sync`` entry changes nothing (the owner answers it with a snapshot);
* a learn whose ``Idempotency-Key`` is remembered at the entry's log time is answered
  from its record (or refused, if the key came with other samples) and not applied;
* a ``dup`` labels entry (labels already taken, sent again with the same key) whose key
  has no record is refused (409): it is never applied;
* any other learn is applied, one step per sample; a step that is not finite or that
  raises is rolled back with the samples after it. Such a rollback is recorded in the
  log; replay applies exactly the samples the record says, whether or not the failure
  would happen again. A labels entry is scored against the predictions that were
  served, not against what the model predicts now;
* a stream entry whose prediction ids cannot be used (an id used again; a late label
  whose step is unknown, expired or labelled) is refused (409 or 404) before anything of
  it is applied: the waiting steps are part of the model's state, so every replay
  refuses it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from service.answers import Answer
from service.errors import ConflictError, InvalidInputError, NotFoundError, ServiceError
from service.idempotency import IdempotencyRecords, Record, fingerprint
from service.live import STREAM_KINDS, LiveModel, Outcome
from service.store.log import SYNC, LogEntry, Rollback
from service.stream_labels import LabelIdRefused


@dataclass(frozen=True)
class Applied:
    """One entry's answer; ``rollback`` is set when this application rolled a step back
    (it must be recorded in the log before anything after it is acknowledged)."""

    entry: LogEntry
    answer: Answer
    rollback: Rollback | None = None


def _samples(entry: LogEntry) -> tuple[list[Any], list[Any]]:
    samples = orjson.loads(entry.samples_json)
    return [s[0] for s in samples], [s[1] for s in samples]


def apply_entry(
    model: LiveModel,
    records: IdempotencyRecords,
    entry: LogEntry,
    recorded: Rollback | None = None,
    xs: list[Any] | None = None,
    ys: list[Any] | None = None,
) -> Applied:
    """Apply ``entry`` (blocking: torch work). ``recorded`` is the rollback the log holds
    for it (replay); ``xs``/``ys`` are its samples when the caller has them parsed."""
    if entry.op == SYNC:
        return Applied(entry, Answer())
    key = entry.idempotency_key
    if key is not None:
        record = records.lookup(key, entry.time_ms)
        if record is not None:
            if record.matches(entry.kind, entry.fingerprinted):
                return Applied(entry, Answer(record.outcome, replayed=True))
            return Applied(
                entry,
                Answer(
                    error=InvalidInputError(
                        f"Idempotency-Key {key!r} was already used for a different request"
                    )
                ),
            )
    if entry.dup:
        return Applied(entry, Answer(error=ConflictError("these predictions were labelled already")))
    try:
        outcome, rollback = _learn(model, entry, recorded, xs, ys)
    except LabelIdRefused as exc:  # decided from the log alone: the same on every replay
        return Applied(entry, Answer(error=_refused(exc, entry.kind, model.name)))
    if key is not None:
        records.put(key, Record(entry.id, fingerprint(entry.kind, entry.fingerprinted), outcome))
    return Applied(entry, Answer(outcome), rollback)


def _refused(exc: LabelIdRefused, kind: str, name: str) -> ServiceError:
    """The 409 or 404 of a prediction id that an entry of ``kind`` cannot use."""
    batch = kind in ("streams", "stream_labels")
    where = (f"steps[{exc.index}]: " if kind == "streams" else f"labels[{exc.index}]: ") if batch else ""
    pid = exc.prediction_id
    if exc.why == "used":
        detail = f"{where}prediction_id {pid!r} was already used for a prediction of model {name!r}"
    elif exc.why == "duplicate":
        detail = f"{where}prediction_id {pid!r} appears twice in one request"
    elif exc.why == "labelled":
        detail = f"{where}prediction {pid!r} was labelled already"
    elif exc.why == "expired":
        detail = (
            f"{where}prediction {pid!r} of model {name!r} is expired "
            "(it waited longer than ONLINENORM_LABEL_TTL_SECONDS)"
        )
    else:
        detail = (
            f"{where}prediction {pid!r} of model {name!r} is unknown "
            "(not made with label_later, evicted, or expired and forgotten)"
        )
    detail += "; nothing was applied"
    return ConflictError(detail) if exc.status == 409 else NotFoundError(detail)


def _learn(
    model: LiveModel, entry: LogEntry, recorded: Rollback | None, xs: list[Any] | None, ys: list[Any] | None
) -> tuple[Outcome, Rollback | None]:
    if entry.kind in STREAM_KINDS:
        return _stream_steps(model, entry, recorded, xs)
    try:
        if xs is None or ys is None:
            xs, ys = _samples(entry)
        served = orjson.loads(entry.served) or None
        if recorded is not None:
            xs, ys = xs[: recorded.applied], ys[: recorded.applied]
            served = served[: recorded.applied] if served is not None else None
        outcome = model.apply(entry.kind, xs, ys, entry.time_ms / 1000.0, served)
    except (ValueError, TypeError, IndexError) as exc:  # samples this spec refuses: nothing applied
        error = f"log entry {entry.id} cannot be applied to this model ({exc}); it was skipped"
        return Outcome(entry.kind, model.step, [], error, 0), Rollback(0, error)
    if outcome.error is not None:  # a step rolled back now (in a replay: earlier than it did live)
        return outcome, Rollback(outcome.applied, outcome.error)
    if recorded is not None:
        return Outcome(entry.kind, outcome.step, outcome.results, recorded.error, recorded.applied), None
    return outcome, None


def _stream_steps(
    model: LiveModel, entry: LogEntry, recorded: Rollback | None, steps: list[Any] | None
) -> tuple[Outcome, Rollback | None]:
    """Stream steps ``[[stream, x, y or null], ...]`` (or a reset ``[[stream]]``), as
    :func:`_learn` applies learns."""
    try:
        if steps is None:
            steps = [tuple(s) for s in orjson.loads(entry.samples_json)]
        if recorded is not None:
            steps = steps[: recorded.applied]
        outcome = model.apply_streams(entry.kind, steps, entry.time_ms)
    except (ValueError, TypeError, IndexError) as exc:
        error = f"log entry {entry.id} cannot be applied to this model ({exc}); it was skipped"
        return Outcome(entry.kind, model.step, [], error, 0), Rollback(0, error)
    if outcome.error is not None:
        return outcome, Rollback(outcome.applied, outcome.error)
    if recorded is not None:
        return (
            Outcome(
                entry.kind, outcome.step, outcome.results, recorded.error, recorded.applied, outcome.extras
            ),
            None,
        )
    return outcome, None
