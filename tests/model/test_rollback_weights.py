"""Non-finite weights after an update roll back like a non-finite loss; predictions
are never NaN or infinite (a ValueError instead)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from model.learner import NonFinitePredictionError, NonFiniteStepError, OnlineLearner

BASE: dict[str, Any] = {"name": "d", "task": "classification", "input_shape": [6], "num_classes": 3}
PATHS = ("fast", "eager")
OPTIMIZERS = (
    {"kind": "sgd", "lr": 0.05, "momentum": 0.9},
    {"kind": "adam"},
    {"kind": "sgd", "momentum": 0.0},
)


def _overflow(learner: OnlineLearner, weight_decay: float) -> None:
    """Set every group's weight decay: 1e308 makes the next update overflow."""
    for group in learner.optimizer.param_groups:
        group["weight_decay"] = weight_decay


def _samples(n: int, seed: int = 0) -> list[tuple[np.ndarray, int]]:
    rng = np.random.default_rng(seed)
    return [((rng.normal(size=6) * 20 + 3).astype(np.float32), int(rng.integers(3))) for _ in range(n)]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("opt", OPTIMIZERS, ids=lambda o: f"{o['kind']}-{o.get('momentum', '')}")
def test_a_huge_weight_decay_rolls_the_first_step_back_byte_for_byte(path: str, opt: dict[str, Any]) -> None:
    learner = OnlineLearner({**BASE, "optimizer": opt}, path=path)
    _overflow(learner, 1e308)  # the spec may bound weight_decay; the update must not rely on it
    before = learner.state_bytes()
    x, y = _samples(1)[0]
    with pytest.raises(NonFiniteStepError, match="non-finite weights"):
        learner.learn_one(x, y)
    assert learner.step == 0
    assert learner.state_bytes() == before
    assert learner.optimizer.state_dict()["state"] == {}  # the lazily created state is gone
    assert np.isfinite(learner.predict_one(x).probabilities).all()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("opt", OPTIMIZERS, ids=lambda o: f"{o['kind']}-{o.get('momentum', '')}")
@pytest.mark.parametrize("fail_at", [0, 3])
def test_after_a_rolled_back_update_the_learner_continues_as_if_it_never_happened(
    path: str, opt: dict[str, Any], fail_at: int
) -> None:
    spec = {**BASE, "optimizer": opt}
    a, b = OnlineLearner(spec, path=path), OnlineLearner(spec, path=path)
    samples = _samples(8, seed=1)
    for i, (x, y) in enumerate(samples):
        if i == fail_at:
            _overflow(a, 1e308)  # only this step's update overflows
            with pytest.raises(NonFiniteStepError):
                a.learn_one(x, y)
            _overflow(a, 0.0)
            assert a.state_bytes() == b.state_bytes()
        ra, rb = a.learn_one(x, y), b.learn_one(x, y)
        assert (ra.step, ra.loss, ra.prediction) == (rb.step, rb.loss, rb.prediction)
    assert a.state_bytes() == b.state_bytes()


@pytest.mark.parametrize("path", PATHS)
def test_a_non_finite_output_raises_instead_of_predicting_nan(path: str) -> None:
    spec = {**BASE, "task": "regression", "num_classes": None, "network": {"input_norm": "none"}}
    learner = OnlineLearner(spec, path=path)
    huge = np.full(6, 3e38, dtype=np.float32)  # finite, so it passes validation
    with pytest.raises(NonFinitePredictionError, match="not finite"):
        learner.predict_one(huge)
    with pytest.raises(NonFinitePredictionError, match="sample 1"):
        learner.predict_many([np.ones(6), huge])
    assert isinstance(learner.predict_one(np.ones(6)).prediction, float)
    assert issubclass(NonFinitePredictionError, ValueError)
