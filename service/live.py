"""A model in memory: its learner behind one lock, and everything that touches it.

The learner is not thread-safe and its work runs in worker threads, so every call
into it holds :attr:`LiveModel.lock`: the writer while it applies a request, readers
while they predict or read statistics. A prediction therefore sees the model before
or after a step, never in the middle of one.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.learner import (
    LearnResult,
    NonFinitePredictionError,
    OnlineLearner,
    Prediction,
    StepRolledBackError,
)
from model.metrics import PrequentialMetrics
from model.spec import ModelSpec
from service import stream_table
from service.store.pending import LabelCounts
from service.stream_labels import Awaiting, AwaitingLabels, LabelChange
from service.stream_table import LiveStream, StreamTable

#: Log entry kinds of late labels of stream steps (one, or a batch).
LABEL_KINDS = ("stream_label", "stream_labels")
#: Log entry kinds of stateful rnn streams: steps (one, or a batch), a reset, late labels.
STREAM_KINDS = ("stream", "streams", "stream_reset", *LABEL_KINDS)


@dataclass(frozen=True)
class Outcome:
    """What one learn request did: the results of the samples applied, in order, and,
    if a step was not finite, the index of that sample (it and those after it were not
    applied) and the reason. Stream steps add, per result, the stream, its position
    ``t`` and the probabilities (``extras``)."""

    kind: str
    step: int
    results: list[LearnResult]
    error: str | None = None
    failed_index: int | None = None
    extras: list[dict[str, Any]] | None = None
    labels: dict[str, Any] | None = None  #: stream entries: what they did to the waiting steps

    @property
    def applied(self) -> int:
        return len(self.results)

    @property
    def changed_state(self) -> bool:
        """Did it change what a snapshot holds (a step, or a stream reset)?"""
        return bool(self.results) or (self.kind == "stream_reset" and self.error is None)

    def to_json(self) -> dict[str, Any]:
        out = {
            "kind": self.kind,
            "step": self.step,
            "results": [[r.step, r.loss, r.prediction] for r in self.results],
            "error": self.error,
            "failed_index": self.failed_index,
        }
        if self.extras is not None:
            out["extras"] = self.extras
        if self.labels is not None:
            out["labels"] = self.labels
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        return cls(
            kind=data["kind"],
            step=data["step"],
            results=[LearnResult(step=s, loss=loss, prediction=p) for s, loss, p in data["results"]],
            error=data["error"],
            failed_index=data["failed_index"],
            extras=data.get("extras"),
            labels=data.get("labels"),
        )


@dataclass
class LatencyWindow:
    """Latencies of the last ``size`` calls, for the model's ``metrics`` endpoint."""

    size: int = 1024
    count: int = 0
    _window: deque[float] = field(default_factory=deque)

    def record(self, seconds: float) -> None:
        self.count += 1
        self._window.append(seconds)
        if len(self._window) > self.size:
            self._window.popleft()

    def summary(self) -> dict[str, float | int | None]:
        values = sorted(self._window)
        if not values:
            return {"count": self.count, "mean_ms": None, "p50_ms": None, "p99_ms": None}

        def pct(q: float) -> float:
            return values[min(len(values) - 1, int(q * len(values)))] * 1e3

        return {
            "count": self.count,
            "mean_ms": sum(values) / len(values) * 1e3,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
        }


class LiveModel:
    """One model's learner, lock, timestamps and latency windows."""

    def __init__(
        self,
        name: str,
        learner: OnlineLearner,
        created_at: float,
        updated_at: float | None = None,
        *,
        stream_ttl_seconds: float = 7 * 86400.0,
        max_streams: int = 10_000,
        label_ttl_seconds: float = 86400.0,
        max_pending_stream_labels: int = 10_000,
    ) -> None:
        self.name = name
        self.learner = learner
        #: The live streams of a stateful rnn (None for any other model).
        self.streams = (
            StreamTable(int(stream_ttl_seconds * 1000), max_streams)
            if learner.spec.network.stateful
            else None
        )
        #: Its stream steps waiting for a late label (None for any other model).
        self.awaiting = (
            AwaitingLabels(int(label_ttl_seconds * 1000), max_pending_stream_labels)
            if learner.spec.network.stateful
            else None
        )
        self.lock = threading.Lock()
        self.created_at = created_at
        self.updated_at = updated_at
        self.learn_latency = LatencyWindow()
        self.predict_latency = LatencyWindow()
        self._layers = learner.layer_names()

    @property
    def spec(self) -> ModelSpec:
        return self.learner.spec

    @property
    def step(self) -> int:
        return self.learner.step

    @property
    def layers(self) -> list[str]:
        return self._layers

    # Everything below blocks (torch work): call it from a worker thread.
    def apply(
        self,
        kind: str,
        xs: Sequence[Any],
        ys: Sequence[Any],
        at: float,
        served: Sequence[dict[str, Any]] | None = None,
    ) -> Outcome:
        """One optimizer step per sample, in order; stops at a step that is not finite or
        that raises, which is rolled back (the samples before it stay applied). ``at`` is
        the request's log time: every replica that applies it records the same time.
        ``served``: for labels, what each prediction answered when it was made; the
        metrics score it and the answer repeats it.
        ``LearnerCorruptedError`` (the update itself failed) propagates: rebuild the model."""
        with self.lock:
            # the metrics before, which a rescore restores (copied only for one)
            before = dataclasses.replace(self.learner.metrics) if served is not None else None
            try:
                results = self.learner.learn_many(xs, ys)
                error, index = None, None
            except StepRolledBackError as exc:
                results, error, index = exc.results, str(exc), exc.index
            if served is not None and before is not None:
                results = self._rescore(before, results, served, ys)
            outcome = Outcome(kind, self.learner.step, results, error, index)
        if outcome.results:
            self.updated_at = at
        return outcome

    def _rescore(
        self,
        before: PrequentialMetrics,
        results: list[LearnResult],
        served: Sequence[dict[str, Any]],
        ys: Sequence[Any],
    ) -> list[LearnResult]:
        """Score the served predictions instead of the ones the steps made: the metrics
        go back to ``before`` and take each step's loss with the served prediction's
        score; the results report the served predictions."""
        metrics = self.learner.metrics
        for f in dataclasses.fields(metrics):
            setattr(metrics, f.name, getattr(before, f.name))
        classify = self.spec.task == "classification"
        out = []
        for r, s, y in zip(results, served, ys, strict=False):
            prediction = s["prediction"]
            if classify:
                score = float(prediction == y)
            else:
                diff = np.asarray(prediction, dtype=np.float32) - np.asarray(y, dtype=np.float32)
                score = float(np.abs(diff).mean())
            metrics.update(r.loss, score)
            out.append(LearnResult(step=r.step, loss=r.loss, prediction=prediction))
        return out

    def apply_streams(self, kind: str, steps: Sequence[Any], at_ms: int) -> Outcome:
        """Stream entries at log time ``at_ms``: steps ``(stream, x, y or None[, prediction
        id])`` (an id: the step waits for its label), a reset ``(stream,)``, or late labels
        ``(prediction id, y)``. They apply in order; a step that fails (non-finite, or
        raised) leaves the learner and its stream as they were and ends the request. An
        id that cannot be used raises :class:`LabelIdRefused` before anything is applied."""
        table, awaiting = self.streams, self.awaiting
        if table is None or awaiting is None:
            raise ValueError(f"model {self.name!r} is not a stateful rnn: it has no streams")
        with self.lock:
            if kind == "stream_reset":
                table.reset(str(steps[0][0]))
                return Outcome(kind, self.learner.step, [])
            change = LabelChange()
            if kind in LABEL_KINDS:
                outcome = self._late_labels(kind, steps, at_ms, change)
            else:
                outcome = self._steps(kind, steps, at_ms, change)
            awaiting.sweep(at_ms, change)
            change.pending = len(awaiting)
            if outcome.results:
                self.updated_at = at_ms / 1000.0
            return dataclasses.replace(outcome, labels=change.to_json())

    def _steps(self, kind: str, steps: Sequence[Any], at_ms: int, change: LabelChange) -> Outcome:
        table, awaiting = self.streams, self.awaiting
        assert table is not None and awaiting is not None
        later = [(i, str(s[3])) for i, s in enumerate(steps) if len(s) > 3 and s[3] is not None]
        awaiting.check_new(later, at_ms)
        results: list[LearnResult] = []
        extras: list[dict[str, Any]] = []
        for i, (stream, x, y, *rest) in enumerate(steps):
            table.sweep(at_ms)
            try:
                state, r = self.learner.stream_step(table.state(stream), x, y)
            except (StepRolledBackError, NonFinitePredictionError) as exc:
                return Outcome(kind, self.learner.step, results, str(exc), i, extras)
            table.put(stream, state, at_ms)
            prediction = r.prediction.prediction
            results.append(LearnResult(step=r.step, loss=r.loss, prediction=prediction))  # type: ignore[arg-type]
            extra: dict[str, Any] = {"stream": stream, "t": r.t}
            if r.prediction.probabilities is not None:
                extra["probabilities"] = r.prediction.probabilities
            pid = rest[0] if rest else None
            if pid is not None:
                extra["prediction_id"] = pid
                served = {"stream": stream, "t": r.t, "prediction": prediction, "step": r.step}
                if r.prediction.probabilities is not None:
                    served["probabilities"] = r.prediction.probabilities
                awaiting.add(str(pid), Awaiting(state, served, at_ms), change)
            extras.append(extra)
        return Outcome(kind, self.learner.step, results, extras=extras)

    def _late_labels(self, kind: str, labels: Sequence[Any], at_ms: int, change: LabelChange) -> Outcome:
        """Labels ``(prediction id, y)`` of steps that waited: each learns from its own
        window, in order, scored against the prediction that was served."""
        awaiting = self.awaiting
        assert awaiting is not None
        ids = [str(pid) for pid, _ in labels]
        found = awaiting.check_labels(ids, at_ms)
        results: list[LearnResult] = []
        extras: list[dict[str, Any]] = []
        for i, ((pid, y), waiting) in enumerate(zip(labels, found, strict=True)):
            served = waiting.served
            try:
                r = self.learner.stream_learn(waiting.state, y, served["prediction"])
            except StepRolledBackError as exc:  # it, and the labels after it, still wait
                return Outcome(kind, self.learner.step, results, str(exc), i, extras)
            awaiting.take(str(pid), at_ms, change)
            results.append(r)
            extras.append({"stream": served["stream"], "t": served["t"], "prediction_id": pid})
        return Outcome(kind, self.learner.step, results, extras=extras)

    def stream_info(self, stream: str) -> tuple[int, LiveStream | None]:
        """A stream as readers see it now (None: not live)."""
        assert self.streams is not None
        with self.lock:
            return self.learner.step, self.streams.get(stream, int(time.time() * 1000))

    def stream_page(self, after: str | None, limit: int) -> tuple[list[tuple[str, LiveStream]], str | None]:
        assert self.streams is not None
        with self.lock:
            return self.streams.page(after, limit, int(time.time() * 1000))

    def stream_figures(self) -> dict[str, Any] | None:
        """Live streams and their memory, for the model's metrics."""
        table = self.streams
        if table is None:
            return None
        with self.lock:
            layout = self.learner.stream_layout
            return {
                "live": len(table),
                "max": table.max_streams,
                "bytes": table.nbytes(),
                "max_bytes_per_stream": layout.max_nbytes if layout is not None else None,
                "expired": table.expired,
                "evicted": table.evicted,
                "awaiting_label_bytes": self.awaiting.nbytes() if self.awaiting is not None else 0,
            }

    def stream_label_counts(self) -> LabelCounts | None:
        """The late labels of a stateful rnn's steps as readers see them now (None: not one)."""
        if self.awaiting is None:
            return None
        with self.lock:
            return self.awaiting.counts(int(time.time() * 1000))

    def load_state(self, data: bytes, updated_at: float | None) -> None:
        """Replace the whole learner state (a snapshot), streams included, in place."""
        with self.lock:
            if self.streams is not None:
                assert self.awaiting is not None
                data = stream_table.unpack(
                    data, self.streams, self.awaiting, self.learner.stream_state_from_parts
                )
            self.learner.load_state_bytes(data)
            self.updated_at = updated_at

    def predict(self, xs: Sequence[Any]) -> tuple[int, list[Prediction]]:
        with self.lock:
            return self.learner.step, self.learner.predict_many(xs)

    def predict_one(self, x: Any) -> tuple[int, Prediction]:
        with self.lock:
            return self.learner.step, self.learner.predict_one(x)

    def read_stats(self, layer: str | None = None) -> tuple[int, list[dict[str, Any]]]:
        """``KeyError`` for an unknown layer."""
        with self.lock:
            return self.learner.step, self.learner.norm_stats(layer)

    def read_metrics(self) -> tuple[int, dict[str, Any]]:
        with self.lock:
            return self.learner.step, self.learner.metrics_dict()

    def state_bytes(self) -> tuple[int, bytes]:
        with self.lock:
            state = self.learner.state_bytes()
            if self.streams is not None:
                assert self.awaiting is not None
                state = stream_table.pack(state, self.streams, self.awaiting)
            return self.learner.step, state
