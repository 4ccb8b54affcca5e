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
from service.stream_table import LiveStream, StreamTable

#: Log entry kinds of stateful rnn streams: steps (one, or a batch), and a reset.
STREAM_KINDS = ("stream", "streams", "stream_reset")


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
    ) -> None:
        self.name = name
        self.learner = learner
        #: The live streams of a stateful rnn (None for any other model).
        self.streams = (
            StreamTable(int(stream_ttl_seconds * 1000), max_streams)
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
            before = dataclasses.replace(self.learner.metrics)
            try:
                results = self.learner.learn_many(xs, ys)
                error, index = None, None
            except StepRolledBackError as exc:
                results, error, index = exc.results, str(exc), exc.index
            if served is not None:
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
        """Stream entries: ``steps`` are ``(stream, x, y or None)`` (``(stream,)`` for a
        reset), applied in order at log time ``at_ms``; a step that fails (non-finite, or
        raised) leaves the learner and its stream as they were and ends the request."""
        table = self.streams
        if table is None:
            raise ValueError(f"model {self.name!r} is not a stateful rnn: it has no streams")
        with self.lock:
            if kind == "stream_reset":
                table.reset(str(steps[0][0]))
                return Outcome(kind, self.learner.step, [])
            results: list[LearnResult] = []
            extras: list[dict[str, Any]] = []
            for i, (stream, x, y) in enumerate(steps):
                table.sweep(at_ms)
                try:
                    state, r = self.learner.stream_step(table.state(stream), x, y)
                except (StepRolledBackError, NonFinitePredictionError) as exc:
                    return Outcome(kind, self.learner.step, results, str(exc), i, extras)
                table.put(stream, state, at_ms)
                results.append(LearnResult(step=r.step, loss=r.loss, prediction=r.prediction.prediction))  # type: ignore[arg-type]
                extra: dict[str, Any] = {"stream": stream, "t": r.t}
                if r.prediction.probabilities is not None:
                    extra["probabilities"] = r.prediction.probabilities
                extras.append(extra)
            self.updated_at = at_ms / 1000.0
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
            }

    def load_state(self, data: bytes, updated_at: float | None) -> None:
        """Replace the whole learner state (a snapshot), streams included, in place."""
        with self.lock:
            if self.streams is not None:
                data = stream_table.unpack(data, self.streams, self.learner.stream_state_from_parts)
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
                state = stream_table.pack(state, self.streams)
            return self.learner.step, state
