"""OnlineLearner: prequential semantics, rollback, exact persistence, input checks."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
import torch

from model.learner import (
    InvalidSampleError,
    LearnerCorruptedError,
    NonFiniteStepError,
    OnlineLearner,
    StepFailedError,
)

DIGITS_LIKE = {"name": "d", "task": "classification", "input_shape": [12], "num_classes": 3}
SPECS: dict[str, dict[str, Any]] = {
    "mlp-cls": DIGITS_LIKE,
    "mlp-reg": {"name": "r", "task": "regression", "input_shape": [5], "output_dim": 2},
    "mlp-sgd-ac": {**DIGITS_LIKE, "norm": {"ecm": "ac"}, "optimizer": {"kind": "sgd", "lr": 0.05}},
    "cnn": {"name": "c", "task": "classification", "input_shape": [2, 6, 6], "num_classes": 4},
    "rnn": {"name": "s", "task": "regression", "input_shape": [5, 3], "network": {"hidden": [8]}},
    "layer": {**DIGITS_LIKE, "norm": {"kind": "layer"}},
    "none": {**DIGITS_LIKE, "norm": {"kind": "none"}, "network": {"input_norm": "none"}},
}


def _stream(spec: dict[str, Any], n: int, seed: int = 0) -> tuple[list[np.ndarray], list[Any]]:
    """Random samples at a raw, unnormalized scale, with targets the spec accepts."""
    rng = np.random.default_rng(seed)
    shape = spec["input_shape"]
    xs = [(rng.normal(size=shape) * 50 + 10).astype(np.float32) for _ in range(n)]
    if spec["task"] == "classification":
        ys: list[Any] = [int(rng.integers(spec["num_classes"])) for _ in range(n)]
    else:
        dim = spec.get("output_dim", 1)
        ys = [rng.normal(size=dim).tolist() if dim > 1 else float(rng.normal()) for _ in range(n)]
    return xs, ys


@pytest.mark.parametrize("key", sorted(SPECS))
def test_learn_one_returns_the_prediction_made_before_the_update(key: str) -> None:
    learner = OnlineLearner(SPECS[key])
    xs, ys = _stream(SPECS[key], 12)
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        before = learner.predict_one(x).prediction
        result = learner.learn_one(x, y)
        assert result.step == i + 1
        # bit for bit: mlp/cnn return the training output, which must equal eval mode;
        # the rnn (whose ON layers advance within a sample) takes an eval forward first
        assert result.prediction == before


@pytest.mark.parametrize("key", sorted(SPECS))
def test_state_round_trip_continues_bit_for_bit(key: str) -> None:
    spec = SPECS[key]
    xs, ys = _stream(spec, 30, seed=1)
    original = OnlineLearner(spec)
    original.learn_many(xs[:15], ys[:15])
    restored = OnlineLearner.from_state_bytes(original.state_bytes())
    assert restored.step == original.step == 15
    assert restored.metrics_dict() == original.metrics_dict()
    a = original.learn_many(xs[15:], ys[15:])
    b = restored.learn_many(xs[15:], ys[15:])
    assert [r.loss for r in a] == [r.loss for r in b]
    assert [r.prediction for r in a] == [r.prediction for r in b]
    for (name, t1), (_, t2) in zip(
        original.network.state_dict().items(), restored.network.state_dict().items(), strict=True
    ):
        assert torch.equal(t1, t2), name
    assert original.state_bytes() == restored.state_bytes()


def test_learn_many_equals_learn_one_in_order() -> None:
    xs, ys = _stream(DIGITS_LIKE, 20, seed=2)
    one, many = OnlineLearner(DIGITS_LIKE), OnlineLearner(DIGITS_LIKE)
    results_one = [one.learn_one(x, y) for x, y in zip(xs, ys, strict=True)]
    results_many = many.learn_many(xs, ys)
    assert results_one == results_many
    assert one.state_bytes() == many.state_bytes()


def test_prequential_metrics_count_the_returned_predictions() -> None:
    xs, ys = _stream(DIGITS_LIKE, 40, seed=3)
    learner = OnlineLearner(DIGITS_LIKE)
    results = learner.learn_many(xs, ys)
    m = learner.metrics_dict()
    assert m["samples_seen"] == 40
    assert m["accuracy"] == pytest.approx(
        np.mean([r.prediction == y for r, y in zip(results, ys, strict=True)])
    )
    assert m["loss"] == pytest.approx(np.mean([r.loss for r in results]))
    assert m["loss_ewm"] is not None and m["accuracy_ewm"] is not None


def test_predict_changes_nothing() -> None:
    learner = OnlineLearner(SPECS["cnn"])
    xs, ys = _stream(SPECS["cnn"], 10, seed=4)
    learner.learn_many(xs[:5], ys[:5])
    before = learner.state_bytes()
    learner.predict_many(xs)
    learner.predict_one(xs[0])
    assert learner.state_bytes() == before


def test_non_finite_loss_rolls_back_everything_and_the_learner_goes_on() -> None:
    spec = SPECS["mlp-reg"]
    learner = OnlineLearner(spec)
    xs, ys = _stream(spec, 5, seed=5)
    learner.learn_many(xs, ys)
    before = learner.state_bytes()
    with pytest.raises(NonFiniteStepError, match="non-finite loss"):
        learner.learn_one(xs[0], [1e30, 1e30])  # squared error overflows float32
    assert learner.state_bytes() == before
    assert learner.learn_one(xs[1], ys[1]).step == 6


def test_non_finite_gradient_rolls_back_everything() -> None:
    learner = OnlineLearner(DIGITS_LIKE, path="eager")  # autograd hooks: the eager step
    xs, ys = _stream(DIGITS_LIKE, 6, seed=6)
    learner.learn_many(xs[:3], ys[:3])
    before = learner.state_bytes()
    param = next(learner.network.parameters())
    handle = param.register_hook(lambda g: torch.full_like(g, float("inf")))
    with pytest.raises(NonFiniteStepError, match="gradient"):
        learner.learn_one(xs[3], ys[3])
    handle.remove()
    assert learner.state_bytes() == before
    assert learner.learn_one(xs[3], ys[3]).step == 4


def test_learn_many_reports_the_failing_index_and_keeps_earlier_samples() -> None:
    spec = SPECS["mlp-reg"]
    learner = OnlineLearner(spec)
    xs, ys = _stream(spec, 4, seed=7)
    ys[2] = [1e30, 1e30]
    with pytest.raises(NonFiniteStepError) as info:
        learner.learn_many(xs, ys)
    assert info.value.index == 2
    assert len(info.value.results) == 2
    assert learner.step == 2


def test_a_step_that_raises_after_the_forward_rolls_back_the_on_state() -> None:
    """The forward advanced every ON layer's mu/var before the loss raised (a label the
    checks would have refused, fed past them): all of it is undone."""
    learner = OnlineLearner(DIGITS_LIKE)
    xs, ys = _stream(DIGITS_LIKE, 4, seed=9)
    learner.learn_many(xs[:3], ys[:3])
    before = learner.state_bytes()
    with pytest.raises(StepFailedError, match="rolled back") as info:
        learner._step(learner.check_x(xs[3]), torch.tensor(7))
    assert isinstance(info.value.__cause__, IndexError | RuntimeError)
    assert learner.state_bytes() == before
    assert learner.learn_one(xs[3], ys[3]).step == 4


def test_a_backward_that_raises_rolls_back_the_control_processes() -> None:
    learner = OnlineLearner(DIGITS_LIKE, path="eager")
    xs, ys = _stream(DIGITS_LIKE, 5, seed=10)
    learner.learn_many(xs[:3], ys[:3])
    before = learner.state_bytes()
    first = next(learner.network.input_norm.parameters(), None) or learner.network.blocks[0][0].weight

    def boom(grad: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("out of memory (as an allocator would say)")

    handle = first.register_hook(boom)
    with pytest.raises(StepFailedError, match="out of memory") as info:
        learner.learn_many(xs[3:], ys[3:])
    handle.remove()
    assert info.value.index == 0 and info.value.results == []
    assert learner.state_bytes() == before
    assert [r.step for r in learner.learn_many(xs[3:], ys[3:])] == [4, 5]


def test_a_failing_optimizer_update_marks_the_learner_corrupted() -> None:
    learner = OnlineLearner(DIGITS_LIKE, path="eager")  # optimizer hooks: the eager step
    xs, ys = _stream(DIGITS_LIKE, 1, seed=11)

    def boom(*_: Any) -> None:
        raise RuntimeError("allocation failed")

    learner.optimizer.register_step_pre_hook(boom)
    with pytest.raises(LearnerCorruptedError, match="optimizer update failed"):
        learner.learn_one(xs[0], ys[0])


@pytest.mark.parametrize("key", sorted(SPECS))
def test_loading_state_in_place_equals_a_fresh_restore(key: str) -> None:
    """``load_state_bytes`` into a learner that has its own history continues exactly
    like ``from_state_bytes`` of the same blob."""
    spec = SPECS[key]
    xs, ys = _stream(spec, 24, seed=12)
    source = OnlineLearner(spec)
    source.learn_many(xs[:8], ys[:8])
    blob = source.state_bytes()
    target = OnlineLearner(spec)
    target.learn_many(xs[8:16], ys[8:16])  # a different past, to be replaced entirely
    target.predict_one(xs[0])
    target.load_state_bytes(blob)
    fresh = OnlineLearner.from_state_bytes(blob)
    assert target.state_bytes() == fresh.state_bytes() == blob
    assert target.learn_many(xs[16:], ys[16:]) == fresh.learn_many(xs[16:], ys[16:])
    assert target.state_bytes() == fresh.state_bytes()
    assert target.norm_stats() == fresh.norm_stats()


def test_loading_state_of_another_spec_is_refused() -> None:
    other = OnlineLearner({**DIGITS_LIKE, "name": "other"})
    with pytest.raises(ValueError, match="another spec"):
        OnlineLearner(DIGITS_LIKE).load_state_bytes(other.state_bytes())


def test_learn_many_validates_every_sample_before_applying_any() -> None:
    learner = OnlineLearner(DIGITS_LIKE)
    xs, ys = _stream(DIGITS_LIKE, 4, seed=8)
    ys[3] = 7
    before = learner.state_bytes()
    with pytest.raises(InvalidSampleError, match=r"sample 3: y = 7 is out of range"):
        learner.learn_many(xs, ys)
    assert learner.state_bytes() == before


@pytest.mark.parametrize(
    ("x", "message"),
    [
        ([1.0] * 11, r"x has shape \[11\]; expected \[12\]"),
        ([[1.0] * 6, [1.0] * 6], r"x has shape \[2, 6\]; expected \[12\]"),
        ([1.0] * 11 + [float("nan")], "NaN or infinite"),
        ([1.0] * 11 + [float("inf")], "NaN or infinite"),
        ([1.0] * 11 + [1e39], "NaN or infinite"),
        (["a"] * 12, "x must be numbers"),
        ([[1.0], [1.0, 2.0]], "x must be numbers"),
    ],
)
def test_bad_inputs_name_the_problem(x: Any, message: str) -> None:
    with pytest.raises(InvalidSampleError, match=message):
        OnlineLearner(DIGITS_LIKE).check_x(x)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_float32_arrays_of_the_input_shape_are_still_checked_for_finiteness(bad: float) -> None:
    """Such arrays take check_x's shortcut (the service's validated bodies): it keeps the
    finiteness check, and gives the same tensor as the general path."""
    learner = OnlineLearner(DIGITS_LIKE)
    x = np.linspace(-1, 1, 12, dtype=np.float32)
    assert torch.equal(learner.check_x(x), learner.check_x(x.tolist()))
    x[5] = bad
    with pytest.raises(InvalidSampleError, match="NaN or infinite"):
        learner.check_x(x)


def test_labels_take_the_same_checks_as_ints_bools_and_floats() -> None:
    learner = OnlineLearner(DIGITS_LIKE)
    assert torch.equal(learner.check_y(2), torch.tensor(2))
    assert torch.equal(learner.check_y(np.int64(2)), torch.tensor(2))
    for bad in (True, 3, -1, 1.5):
        with pytest.raises(InvalidSampleError):
            learner.check_y(bad)


@pytest.mark.parametrize(
    ("y", "message"),
    [
        (3, "out of range"),
        (-1, "out of range"),
        (1.5, "class index"),
        (True, "class index"),
        ("1", "class index"),
    ],
)
def test_bad_labels_name_the_problem(y: Any, message: str) -> None:
    with pytest.raises(InvalidSampleError, match=message):
        OnlineLearner(DIGITS_LIKE).check_y(y)


def test_regression_targets_are_checked() -> None:
    learner = OnlineLearner(SPECS["mlp-reg"])
    with pytest.raises(InvalidSampleError, match="y has 1 values; this model predicts 2"):
        learner.check_y(1.0)
    with pytest.raises(InvalidSampleError, match="NaN or infinite"):
        learner.check_y([1.0, float("nan")])
    assert learner.check_y([1, 2]).tolist() == [1.0, 2.0]


def test_inputs_may_be_nested_flat_numpy_or_tensor() -> None:
    learner = OnlineLearner(SPECS["cnn"])
    x = np.arange(72, dtype=np.float64).reshape(2, 6, 6)
    expected = learner.predict_one(x.tolist()).prediction
    assert learner.predict_one(x.reshape(-1).tolist()).prediction == expected
    assert learner.predict_one(x).prediction == expected
    assert learner.predict_one(torch.from_numpy(x)).prediction == expected


def test_classification_predictions_carry_probabilities() -> None:
    learner = OnlineLearner(DIGITS_LIKE)
    p = learner.predict_one([0.0] * 12)
    assert p.probabilities is not None and len(p.probabilities) == 3
    assert sum(p.probabilities) == pytest.approx(1.0, abs=1e-6)
    assert p.prediction == int(np.argmax(p.probabilities))


def test_state_blob_is_not_a_pickle_and_garbage_is_refused() -> None:
    blob = OnlineLearner(DIGITS_LIKE).state_bytes()
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(blob)  # proving the blob is not a pickle
    with pytest.raises(ValueError, match=r"onlinenorm state|too short|header"):
        OnlineLearner.from_state_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(ValueError):
        OnlineLearner.from_state_bytes(pickle.dumps({"a": 1}))


def test_norm_stats_describe_every_online_layer() -> None:
    learner = OnlineLearner(DIGITS_LIKE)
    xs, ys = _stream(DIGITS_LIKE, 10, seed=9)
    learner.learn_many(xs, ys)
    stats = learner.norm_stats()
    assert [s["name"] for s in stats] == learner.layer_names()
    assert len(stats) == 3  # raw inputs + two hidden layers
    hidden = stats[1]
    assert hidden["num_features"] == 128 and len(hidden["mu"]) == 128
    assert hidden["samples_tracked"] == 10
    assert hidden["ls_rms"] is not None and hidden["ls_rms"] > 0
    assert hidden["summary"]["std_min"] <= hidden["summary"]["std_mean"] <= hidden["summary"]["std_max"]
    raw = stats[0]
    assert raw["summary"]["mu_mean"] == pytest.approx(float(np.mean(np.mean(xs, axis=0) * 10 / 11)), rel=1e-4)
    assert learner.norm_stats(hidden["name"])[0]["name"] == hidden["name"]
    with pytest.raises(KeyError, match="unknown layer"):
        learner.norm_stats("nope")


def test_default_learner_is_insensitive_to_feature_scale() -> None:
    """Two informative features at scales 1e-3 and 1e3: the defaults still learn."""
    rng = np.random.default_rng(10)
    n = 1200
    labels = rng.integers(0, 2, size=n)
    signal = rng.normal(size=(n, 2)) + labels[:, None] * 2.0
    x = signal * np.array([1e-3, 1e3]) + np.array([5e-3, -4e3])
    learner = OnlineLearner({"name": "scale", "task": "classification", "input_shape": [2], "num_classes": 2})
    results = learner.learn_many(x.tolist(), labels.tolist())
    late = np.mean([r.prediction == y for r, y in zip(results[-400:], labels[-400:], strict=True)])
    assert late > 0.85


@pytest.mark.parametrize(
    ("x", "found"),
    [(["1"] * 12, "strings"), ([True] * 12, "booleans"), ([None] * 12, "nulls")],
)
def test_non_numbers_are_refused_by_name(x: Any, found: str) -> None:
    with pytest.raises(InvalidSampleError, match=found):
        OnlineLearner(DIGITS_LIKE).check_x(x)
    with pytest.raises(InvalidSampleError, match=found):
        OnlineLearner(SPECS["mlp-reg"]).check_y(x[:2])


def test_health_signals_follow_training_steps_only() -> None:
    """Predictions and rolled-back steps leave ls_rms and clamped_fraction alone."""
    for key in ("mlp-cls", "mlp-sgd-ac"):
        learner = OnlineLearner(SPECS[key], path="eager")
        xs, ys = _stream(SPECS[key], 6, seed=11)
        learner.learn_many(xs[:3], ys[:3])
        field = "clamped_fraction" if key == "mlp-sgd-ac" else "ls_rms"
        before = [s[field] for s in learner.norm_stats()]
        learner.predict_many([x * 1000 for x in xs])
        param = next(learner.network.parameters())
        handle = param.register_hook(lambda g: torch.full_like(g, float("nan")))
        with pytest.raises(NonFiniteStepError):
            learner.learn_one(xs[3] * 1000, ys[3])
        handle.remove()
        assert [s[field] for s in learner.norm_stats()] == before
        learner.learn_one(xs[4] * 1000, ys[4])
        assert [s[field] for s in learner.norm_stats()] != before


@pytest.mark.parametrize("key", ["mlp-cls", "mlp-reg", "rnn"])
def test_fast_steps_do_not_depend_on_the_thread_count(key: str) -> None:
    """The fast steps (NumPy, and torch's elementwise fused updates) round alike at any
    torch thread count, so their models are reproducible across processes; the eager
    cnn's convolutions are not (tests/conftest.py pins one thread, as the service)."""
    spec = SPECS[key]
    xs, ys = _stream(spec, 3, seed=21)
    threads = torch.get_num_threads()
    states = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            learner = OnlineLearner(spec)
            assert learner.path == "fast"
            learner.learn_many(xs, ys)
            states.append(learner.state_bytes())
    finally:
        torch.set_num_threads(threads)
    assert states[0] == states[1]
