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


@pytest.mark.parametrize("path", PATHS)
def test_steady_steps_skip_the_copy_and_a_huge_learning_rate_is_still_caught(path: str) -> None:
    learner = OnlineLearner({**BASE, "optimizer": {"kind": "adam"}}, path=path)
    samples = _samples(6, seed=2)
    copied = []
    real_prepare = learner._guard.prepare

    def spy(grad_norm: float) -> bool:
        copied.append(real_prepare(grad_norm))
        return copied[-1]

    learner._guard.prepare = spy  # type: ignore[method-assign]
    for x, y in samples[:4]:
        learner.learn_one(x, y)
    assert copied[0] and not any(copied[1:])  # the first step measures; the bounds cover the rest
    before = learner.state_bytes()
    lrs = [group["lr"] for group in learner.optimizer.param_groups]
    for group in learner.optimizer.param_groups:
        group["lr"] = 1e300  # beyond the bounds: copied, checked, refused
    with pytest.raises(NonFiniteStepError):
        learner.learn_one(*samples[4])
    for group, lr in zip(learner.optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    assert copied[-1] and learner.state_bytes() == before


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_whenever_the_guard_skips_the_check_the_update_stays_within_its_bound(kind: str) -> None:
    """Random hyper-parameters and gradient scales: an unchecked update never exceeds
    the bound the guard advanced (so it cannot have overflowed)."""
    rng = np.random.default_rng(5)
    skipped = 0
    for trial in range(40):
        opt = {"kind": kind, "clip_grad_norm": None}
        learner = OnlineLearner(
            {**BASE, "task": "regression", "num_classes": None, "optimizer": opt}, path="eager"
        )
        guard = learner._guard
        x, _ = _samples(1, seed=trial)[0]
        learner.learn_one(x, 0.0)  # measured
        for group in learner.optimizer.param_groups:
            group["lr"] = float(10 ** rng.uniform(-4, 8))
            group["weight_decay"] = float(10 ** rng.uniform(-4, 12))
            if kind == "sgd":
                group["momentum"] = float(rng.uniform(0, 0.99))
        try:
            learner.learn_one(x * float(10 ** rng.uniform(0, 6)), float(10 ** rng.uniform(0, 8)))
        except NonFiniteStepError:
            continue
        assert guard._bound is not None
        if not guard._saved:
            skipped += 1
            largest = max(float(p.detach().abs().max()) for p in learner._params)
            assert largest <= guard._bound[0]
    assert skipped > 5  # the bounds were exercised
