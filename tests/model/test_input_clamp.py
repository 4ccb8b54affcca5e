"""``network.input_clamp``: the input standardizer's outputs clamped, on every network
kind and path (the fast paths against the eager one: tests/model/test_fast_step.py,
specs ``clamp``, ``cnn-clamp``, ``rnn-clamp``); off unless asked for."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from model.learner import OnlineLearner
from model.spec import ModelSpec

BASE = {"name": "c", "task": "classification", "input_shape": [4], "num_classes": 2}


def test_off_by_default_and_for_stored_specs() -> None:
    """A spec stored before the field existed loads without it: the same network as then."""
    stored = ModelSpec.model_validate(BASE).model_dump(mode="json")
    del stored["network"]["input_clamp"]
    assert ModelSpec.model_validate(stored).network.input_clamp is None
    plain = OnlineLearner(BASE).network.input_norm
    assert getattr(plain, "input_clamp", None) is None


@pytest.mark.parametrize(
    "shape, network", [([4], {}), ([1, 3, 3], {"kind": "cnn", "channels": [2]}), ([3, 4], {"kind": "rnn"})]
)
def test_the_standardized_inputs_are_clamped(shape: list[int], network: dict) -> None:
    spec = {**BASE, "input_shape": shape, "network": {**network, "input_clamp": 2.0}}
    clamped = OnlineLearner(spec).network.input_norm
    plain = OnlineLearner({**spec, "network": network}).network.input_norm
    assert list(clamped.state_dict()) == list(plain.state_dict())  # the same snapshot keys
    x = torch.randn(1, *shape) * 100  # the first sample: standardized by the prior (0, 1)
    if network.get("kind") == "rnn":
        x = x.transpose(1, 2)  # the rnn standardizes (N, F, T)
    out, ref = clamped(x), plain(x)
    assert out.abs().max() == 2.0 and ref.abs().max() > 2.0
    assert torch.equal(out, ref.clamp(-2.0, 2.0))
    assert torch.equal(clamped.mu, plain.mu) and torch.equal(clamped.var, plain.var)  # same statistics


def test_a_clamped_model_learns_the_same_either_path() -> None:
    spec = {**BASE, "network": {"input_clamp": 1.0}}
    fast, eager = OnlineLearner(spec), OnlineLearner(spec, path="eager")
    assert fast.path == "fast"
    gen = torch.Generator().manual_seed(1)
    for _ in range(50):
        x = (torch.randn(4, generator=gen) * 30).tolist()
        y = int(x[0] > 0)
        assert fast.learn_one(x, y).prediction == eager.learn_one(x, y).prediction
    probe = [40.0, -3.0, 0.1, 9.0]
    assert fast.predict_one(probe).probabilities == pytest.approx(
        eager.predict_one(probe).probabilities, rel=1e-5
    )


@pytest.mark.parametrize("bad", [0, -1, 1e9])
def test_out_of_range_is_refused(bad: float) -> None:
    with pytest.raises(ValidationError, match="input_clamp"):
        ModelSpec.model_validate({**BASE, "network": {"input_clamp": bad}})
