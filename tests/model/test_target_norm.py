"""``network.target_norm: running``: regression targets standardized by their running
statistics, predictions mapped back; and ``ModelSpec.from_stored``, which keeps a stored
spec's meaning when a new field's default would change it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from model.learner import NonFiniteStepError, OnlineLearner
from model.spec import ModelSpec
from model.state_io import dump_state, load_state

REG = {"name": "r", "task": "regression", "input_shape": [4]}


def _stream(n: int, seed: int = 0, offset: float = 150.0, spread: float = 40.0) -> list[tuple[Any, Any]]:
    """Targets far from 0 and wide: a raw head needs most of a stream to reach them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = offset + spread * np.tanh(x @ np.array([1.0, -0.5, 0.3, 0.0]))
    return [(xi, [float(yi)]) for xi, yi in zip(x, y, strict=True)]


def test_the_default_is_running_for_regression_only() -> None:
    assert ModelSpec.model_validate(REG).network.target_norm == "running"
    classify = {"name": "c", "task": "classification", "input_shape": [4], "num_classes": 2}
    assert ModelSpec.model_validate(classify).network.target_norm == "none"
    stateful = {**REG, "input_shape": [3], "network": {"stateful": True}}
    assert ModelSpec.model_validate(stateful).network.target_norm == "none"
    with pytest.raises(ValueError, match="is for regression"):
        ModelSpec.model_validate({**classify, "network": {"target_norm": "running"}})
    with pytest.raises(ValueError, match="stateful rnn"):
        ModelSpec.model_validate({**stateful, "network": {"stateful": True, "target_norm": "running"}})


def test_a_stored_spec_without_new_fields_keeps_what_it_meant() -> None:
    """A dump from before target_norm and input_clamp existed: raw targets, no clamp."""
    stored = ModelSpec.model_validate({**REG, "network": {"target_norm": "running", "input_clamp": 3.0}})
    dump = stored.model_dump(mode="json")
    assert ModelSpec.from_stored(dump) == stored  # a dump of today round-trips
    del dump["network"]["target_norm"], dump["network"]["input_clamp"]
    old = ModelSpec.from_stored(dump)
    assert old.network.target_norm == "none" and old.network.input_clamp is None
    assert ModelSpec.model_validate(dump).network.target_norm == "running"  # a new spec's default
    with pytest.raises(ValueError):
        ModelSpec.from_stored(b"[1, 2]")


def test_steps_train_on_scaled_targets_and_answer_in_raw_units() -> None:
    """The step's prediction is the network's output mapped back with the statistics of
    the targets before it; the statistics then take the target in (Welford, exact)."""
    learner = OnlineLearner(REG)
    plain = OnlineLearner({**REG, "network": {"target_norm": "none"}})
    data = [(x, [float(np.float32(y[0]))]) for x, y in _stream(50)]  # as check_y rounds them
    for i, (x, y) in enumerate(data):
        ys = np.array([t[0] for _, t in data[:i]])
        mean = ys.mean() if i else 0.0
        std = ys.std() if i > 1 and ys.std() > 0 else 1.0
        z = (y[0] - mean) / std
        got = learner.learn_one(x, y)
        want = plain.learn_one(x, [z])  # the same network, fed the scaled target by hand
        assert got.loss == pytest.approx(want.loss, rel=1e-5)
        assert got.prediction == pytest.approx(want.prediction * std + mean, rel=1e-5, abs=1e-4)
    scaler = learner.target_scaler
    assert scaler is not None and scaler.count == 50
    assert scaler.mean[0] == pytest.approx(np.mean([y[0] for _, y in data]), rel=1e-12)
    assert math.sqrt(scaler.m2[0] / 50) == pytest.approx(np.std([y[0] for _, y in data]), rel=1e-12)
    pred = learner.predict_one(data[0][0]).prediction
    out = plain.predict_one(data[0][0]).prediction
    assert pred == pytest.approx(out * scaler.std()[0] + scaler.mean[0], rel=1e-5)


def test_it_learns_far_faster_than_raw_targets() -> None:
    def mae(spec: dict[str, Any]) -> float:
        learner = OnlineLearner(spec)
        return float(np.mean([abs(learner.learn_one(x, y).prediction - y[0]) for x, y in _stream(400)]))

    assert mae(REG) < 0.5 * mae({**REG, "network": {"target_norm": "none"}})


@pytest.mark.parametrize("path", ["fast", "eager"])
def test_state_round_trip_continues_bit_for_bit(path: str) -> None:
    data = _stream(120, seed=1)
    a = OnlineLearner({**REG, "output_dim": 1}, path=path)
    for x, y in data[:60]:
        a.learn_one(x, y)
    b = OnlineLearner.from_state_bytes(a.state_bytes(), path=path)  # type: ignore[arg-type]
    c = OnlineLearner({**REG, "output_dim": 1}, path=path)
    c.load_state_bytes(a.state_bytes())
    assert b.path == c.path == path
    twins = [c, b]
    for x, y in data[60:]:
        want = a.learn_one(x, y)
        assert all(t.learn_one(x, y) == want for t in twins)
    assert all(t.state_bytes() == a.state_bytes() for t in twins)


def test_a_state_without_target_statistics_is_refused_before_anything_loads() -> None:
    raw = OnlineLearner({**REG, "network": {"target_norm": "none"}})
    raw.learn_one(*_stream(1)[0])
    tensors, meta = load_state(raw.state_bytes())
    meta["spec"]["network"]["target_norm"] = "running"  # says running, holds no statistics
    blob = dump_state(tensors, meta)
    with pytest.raises(ValueError, match="no target statistics"):
        OnlineLearner.from_state_bytes(blob)
    learner = OnlineLearner(REG)
    for x, y in _stream(5, seed=2):
        learner.learn_one(x, y)
    before = learner.state_bytes()
    with pytest.raises(ValueError, match="no target statistics"):
        learner.load_state_bytes(blob)
    assert learner.state_bytes() == before


@pytest.mark.parametrize("path", ["fast", "eager"])
def test_a_rolled_back_step_leaves_the_target_statistics_alone(path: str) -> None:
    learner = OnlineLearner(REG, path=path)
    for x, y in _stream(10):
        learner.learn_one(x, y)
    before = learner.state_bytes()
    with pytest.raises(NonFiniteStepError):
        learner.learn_one(np.zeros(4, dtype=np.float32), [3e38])  # its scaled loss overflows
    assert learner.state_bytes() == before


def test_multi_output_targets_are_scaled_per_output() -> None:
    spec = {**REG, "output_dim": 2}
    learner = OnlineLearner(spec)
    rng = np.random.default_rng(3)
    ys = []
    for _ in range(30):
        y = [float(np.float32(rng.normal(1000, 5))), float(np.float32(rng.normal(-2, 0.1)))]
        ys.append(y)
        learner.learn_one(rng.normal(size=4).astype(np.float32), y)
    scaler = learner.target_scaler
    assert scaler is not None
    np.testing.assert_allclose(scaler.mean, np.mean(ys, axis=0), rtol=1e-12)
    np.testing.assert_allclose(scaler.std(), np.std(ys, axis=0), rtol=1e-10)
    assert isinstance(learner.predict_one(torch.zeros(4)).prediction, list)
