"""What a model must equal: a reference OnlineLearner rebuilt from what Redis holds
(the snapshot, then the logged samples in log order)."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import redis

from model.learner import OnlineLearner
from service.store import keys


def logged_requests(rds: redis.Redis, prefix: str, name: str) -> list[list[list[Any]]]:
    """The samples (``[[x, y], ...]``) of every learn entry, in log order."""
    out = []
    for _, fields in rds.xrange(keys.log_key(prefix, name)):
        assert fields[b"op"] == b"learn", fields
        out.append(orjson.loads(fields[b"samples"]))
    return out


def reference_learner(rds: redis.Redis, prefix: str, name: str) -> tuple[OnlineLearner, list[Any]]:
    """The snapshot's learner fed the log after it; and the per-sample results."""
    state = rds.hget(keys.snapshot_key(prefix, name), "state")
    assert state is not None
    learner = OnlineLearner.from_state_bytes(state)
    results = []
    for request in logged_requests(rds, prefix, name):
        results.extend(learner.learn_many([s[0] for s in request], [s[1] for s in request]))
    return learner, results


def probe_predictions(learner: OnlineLearner, probes: list[list[float]]) -> dict[str, Any]:
    """What ``predict/batch`` must answer for ``probes`` (a regression answer has no
    ``probabilities``)."""
    return {
        "step": learner.step,
        "predictions": [
            {"prediction": p.prediction}
            if p.probabilities is None
            else {"prediction": p.prediction, "probabilities": p.probabilities}
            for p in learner.predict_many(probes)
        ],
    }


def without_ecm_diagnostics(stats: dict[str, Any]) -> dict[str, Any]:
    """Stats without ``ls_rms`` and ``clamped_fraction``: model/ records them on every
    forward, so a prediction (or a rolled-back step) moves them without changing the model."""
    for layer in stats["layers"]:
        layer.pop("ls_rms")
        layer.pop("clamped_fraction")
    return stats


def model_state(client: httpx.Client, name: str = "m", ecm_diagnostics: bool = True) -> dict[str, Any]:
    """Everything the API says about a model's state: stats, metrics (without the
    latencies, which every call moves) and the model itself."""
    stats = client.get(f"/v1/models/{name}/stats").json()
    metrics = client.get(f"/v1/models/{name}/metrics").json()
    metrics.pop("latency")
    return {
        "stats": stats if ecm_diagnostics else without_ecm_diagnostics(stats),
        "metrics": metrics,
        "model": client.get(f"/v1/models/{name}").json(),
    }
