"""Prometheus series of delayed labels, per model (removed with the model): how many
predictions wait, how many labels arrived, expired or were evicted, and the delays."""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from service.store.pending import Change
from service.telemetry import Telemetry

_DELAY_BUCKETS = (0.1, 1.0, 10.0, 60.0, 600.0, 3600.0, 6 * 3600.0, 86400.0, 7 * 86400.0)


class LabelTelemetry:
    def __init__(self, telemetry: Telemetry) -> None:
        r = telemetry.registry
        self.pending = Gauge(
            "onlinenorm_pending_labels",
            "predictions waiting for their label (as of this replica's last predict or label)",
            ["model"],
            registry=r,
        )
        self.received = Counter("onlinenorm_labels_received", "labels taken", ["model"], registry=r)
        self.expired = Counter(
            "onlinenorm_labels_expired", "pending predictions forgotten unlabelled", ["model"], registry=r
        )
        self.evicted = Counter(
            "onlinenorm_labels_evicted",
            "pending predictions evicted early by ONLINENORM_MAX_PENDING_LABELS",
            ["model"],
            registry=r,
        )
        self.delay = Histogram(
            "onlinenorm_label_delay_seconds",
            "from prediction to label",
            ["model"],
            buckets=_DELAY_BUCKETS,
            registry=r,
        )

    def observe(self, model: str, change: Change) -> None:
        self.pending.labels(model).set(change.pending)
        if change.expired:
            self.expired.labels(model).inc(change.expired)
        if change.evicted:
            self.evicted.labels(model).inc(change.evicted)
        if change.delays_seconds:
            self.received.labels(model).inc(len(change.delays_seconds))
            delay = self.delay.labels(model)
            for seconds in change.delays_seconds:
                delay.observe(seconds)

    def observe_entry(self, model: str, labels: dict[str, Any]) -> None:
        """What a stateful rnn's stream entry did to its steps waiting for labels
        (:meth:`service.stream_labels.LabelChange.to_json`)."""
        delays = tuple(float(d) for d in labels.get("delays", ()))
        self.observe(
            model, Change(int(labels["pending"]), int(labels["expired"]), int(labels["evicted"]), delays)
        )

    def remove(self, model: str) -> None:
        for metric in (self.pending, self.received, self.expired, self.evicted, self.delay):
            with contextlib.suppress(KeyError):
                metric.remove(model)


_BY_TELEMETRY: weakref.WeakKeyDictionary[Telemetry, LabelTelemetry] = weakref.WeakKeyDictionary()


def label_telemetry(telemetry: Telemetry) -> LabelTelemetry:
    """The label series of ``telemetry``'s registry, made on first use."""
    found = _BY_TELEMETRY.get(telemetry)
    if found is None:
        found = _BY_TELEMETRY[telemetry] = LabelTelemetry(telemetry)
    return found
