"""Per-model Prometheus series: the normalizer's layer summaries, the prequential
metrics, and counters of samples learned and of learn errors.

Labels are ``model`` (and ``layer``) only. A model's series exist while it exists:
:meth:`WatchMetrics.forget_model` removes them all when it is deleted, so the label
sets stay bounded by the models served.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

#: Layer summary field -> help text; each becomes ``onlinenorm_norm_<field>{model,layer}``.
LAYER_GAUGES = {
    "mu_mean": "mean over channels of the running mean mu",
    "mu_spread": "standard deviation over channels of mu",
    "std_mean": "mean over channels of sqrt(var + eps), the normalizer's divisor",
    "std_spread": "standard deviation over channels of sqrt(var + eps)",
    "u_abs_max": "largest |u| (control process of the all-ones direction)",
    "v_abs_max": "largest |v| (control process of the output direction)",
    "ls_rms": "RMS before layer scaling (ecm 'ls'): 1 when the estimates are right",
    "clamped_fraction": "fraction of activations clamped (ecm 'ac')",
    "samples_tracked": "samples the layer's statistics have seen",
}
#: Prequential metric -> help text; each becomes ``onlinenorm_model_<metric>{model}``.
MODEL_GAUGES = {
    "step": "samples learned so far (optimizer steps)",
    "loss_ewm": "prequential loss, exponentially weighted (horizon ~100 samples)",
    "accuracy_ewm": "prequential accuracy, exponentially weighted (classification)",
    "mae_ewm": "prequential mean absolute error, exponentially weighted (regression)",
}


def _value(raw: Any) -> float | None:
    if raw is None or isinstance(raw, bool):
        return None
    value = float(raw)
    return value if math.isfinite(value) else None


def _remove(metric: Gauge | Counter, *labels: str) -> None:
    """Drop one series; absent is fine (older prometheus-client versions raise KeyError)."""
    with contextlib.suppress(KeyError):
        metric.remove(*labels)


class WatchMetrics:
    """Updated by each model's writer when it publishes stats or counts a step."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.layer = {
            field: Gauge(f"onlinenorm_norm_{field}", text, ["model", "layer"], registry=registry)
            for field, text in LAYER_GAUGES.items()
        }
        self.model = {
            field: Gauge(f"onlinenorm_model_{field}", text, ["model"], registry=registry)
            for field, text in MODEL_GAUGES.items()
        }
        self.samples = Counter(
            "onlinenorm_model_samples_learned",
            "samples applied (steps), per model",
            ["model"],
            registry=registry,
        )
        self.nonfinite = Counter(
            "onlinenorm_model_nonfinite_steps",
            "steps rolled back for a non-finite loss or gradient, per model",
            ["model"],
            registry=registry,
        )
        self.unavailable = Counter(
            "onlinenorm_model_learn_unavailable",
            "learn requests refused because Redis was unreachable, per model",
            ["model"],
            registry=registry,
        )
        self.streams = Gauge("onlinenorm_stats_streams", "open stats event streams (SSE)", registry=registry)
        self._layers: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def count_learned(self, model: str, applied: int, nonfinite: int) -> None:
        if applied:
            self.samples.labels(model).inc(applied)
        if nonfinite:
            self.nonfinite.labels(model).inc(nonfinite)

    def count_unavailable(self, model: str, requests: int = 1) -> None:
        self.unavailable.labels(model).inc(requests)

    def observe(
        self, model: str, step: int, layers: Iterable[dict[str, Any]], metrics: dict[str, Any] | None
    ) -> None:
        """Set the gauges from one published update (summaries as the stats stream holds them)."""
        seen = set()
        for layer in layers:
            name = str(layer["name"])
            seen.add(name)
            for field, gauge in self.layer.items():
                value = _value(layer.get(field))
                if value is None:
                    _remove(gauge, model, name)
                else:
                    gauge.labels(model, name).set(value)
        with self._lock:
            self._layers.setdefault(model, set()).update(seen)
        values = {"step": step, **(metrics or {})}
        for field, gauge in self.model.items():
            value = _value(values.get(field))
            if value is None:
                _remove(gauge, model)
            else:
                gauge.labels(model).set(value)

    def forget_model(self, model: str) -> None:
        """Remove every series of ``model`` (it was deleted)."""
        with self._lock:
            layers = self._layers.pop(model, set())
        for gauge in self.layer.values():
            for layer in layers:
                _remove(gauge, model, layer)
        for metric in (*self.model.values(), self.samples, self.nonfinite, self.unavailable):
            _remove(metric, model)
