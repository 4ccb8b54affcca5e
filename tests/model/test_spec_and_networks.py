"""Model specs (validation, defaults) and the networks built from them."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from model import OnlineNorm1d, OnlineNorm2d
from model.networks import build_network, online_norm_layers
from model.spec import ModelSpec

MINIMAL = {"name": "digits", "task": "classification", "input_shape": [64], "num_classes": 10}


def test_design_md_example_spec_is_accepted_verbatim() -> None:
    spec = ModelSpec.model_validate(
        {
            "name": "digits",
            "task": "classification",
            "input_shape": [64],
            "num_classes": 10,
            "network": {"kind": "mlp", "hidden": [128, 64]},
            "norm": {"kind": "online", "alpha_fwd": 0.999, "alpha_bkw": 0.99, "ecm": "ls"},
            "optimizer": {"kind": "sgd", "lr": 0.01, "momentum": 0.9},
            "seed": 0,
        }
    )
    assert spec.optimizer.kind == "sgd" and spec.network.hidden == [128, 64]


def test_minimal_spec_gets_defaults_and_round_trips_as_json() -> None:
    spec = ModelSpec.model_validate(MINIMAL)
    assert spec.network_kind == "mlp" and spec.norm.kind == "online" and spec.output_size == 10
    assert ModelSpec.model_validate_json(spec.model_dump_json()) == spec


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "-bad"}, "invalid model name"),
        ({"name": "a" * 65}, "invalid model name"),
        ({"name": "sp ace"}, "invalid model name"),
        ({"num_classes": None}, "classification needs num_classes"),
        ({"num_classes": 1}, "num_classes must be between 2"),
        ({"output_dim": 2}, "output_dim is for regression"),
        ({"task": "ranking"}, "task"),
        ({"input_shape": []}, "input_shape"),
        ({"input_shape": [0]}, "must be positive"),
        ({"input_shape": [1, 2, 3, 4]}, "input_shape"),
        ({"network": {"kind": "cnn"}}, "needs input_shape of rank 3"),
        ({"network": {"kind": "rnn"}}, "needs input_shape of rank 2"),
        ({"network": {"hidden": [0]}}, "layer widths"),
        ({"norm": {"kind": "batch"}}, "norm.kind"),
        ({"norm": {"alpha_fwd": 1.0}}, "alpha_fwd"),
        ({"norm": {"ecm": "xx"}}, "norm.ecm"),
        ({"optimizer": {"lr": -1}}, "optimizer.lr"),
        ({"optimizer": {"betas": [0.9, 1.5]}}, "betas must lie"),
        ({"nrom": {}}, "nrom"),
    ],
)
def test_bad_specs_name_the_problem(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        ModelSpec.model_validate({**MINIMAL, **change})
    text = str(info.value)
    for part in message.split("."):
        assert part in text


def test_regression_requires_no_classes() -> None:
    spec = ModelSpec.model_validate({"name": "r", "task": "regression", "input_shape": [3]})
    assert spec.output_size == 1
    with pytest.raises(ValidationError, match="num_classes is for classification"):
        ModelSpec.model_validate({"name": "r", "task": "regression", "input_shape": [3], "num_classes": 3})


@pytest.mark.parametrize("norm", ["online", "layer", "none"])
@pytest.mark.parametrize(
    ("shape", "kind"), [([7], "mlp"), ([3, 8, 8], "cnn"), ([6, 4], "rnn"), ([2, 3, 4], "mlp")]
)
def test_every_network_kind_builds_and_runs(shape: list[int], kind: str, norm: str) -> None:
    spec = ModelSpec.model_validate(
        {
            "name": "n",
            "task": "classification",
            "input_shape": shape,
            "num_classes": 5,
            "network": {"kind": kind},
            "norm": {"kind": norm},
        }
    )
    net = build_network(spec)
    out = net(torch.randn(4, *shape))
    assert out.shape == (4, 5)
    out.sum().backward()
    hidden = [m for _, m in online_norm_layers(net)][1:]  # the first normalizes raw inputs
    if norm == "online":
        assert hidden, "online norm must put ON layers in the hidden layers"
        expected = OnlineNorm2d if kind == "cnn" else OnlineNorm1d
        assert all(isinstance(m, expected) for m in hidden)
    else:
        assert not hidden


def test_raw_input_normalization_can_be_turned_off() -> None:
    spec = ModelSpec.model_validate({**MINIMAL, "network": {"input_norm": "none"}})
    names = [n for n, _ in online_norm_layers(build_network(spec))]
    assert "input_norm" not in names and len(names) == 2


def test_rnn_normalizes_recurrent_pre_activations_once_per_time_step() -> None:
    spec = ModelSpec.model_validate({"name": "s", "task": "regression", "input_shape": [5, 3]})
    net = build_network(spec)
    norms = dict(online_norm_layers(net))
    net(torch.randn(2, 5, 3)).sum().backward()
    recurrent = [m for name, m in norms.items() if name != "input_norm"]
    assert recurrent and all(int(m.num_samples_tracked) == 2 * 5 for m in recurrent)
    assert all(bool(m.v.abs().sum() > 0) for m in recurrent)


def test_same_seed_same_weights_without_touching_global_rng() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = build_network(ModelSpec.model_validate(MINIMAL))
    assert torch.equal(torch.rand(1), expected_next)
    b = build_network(ModelSpec.model_validate(MINIMAL))
    c = build_network(ModelSpec.model_validate({**MINIMAL, "seed": 1}))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_layer_kinds_use_the_reference_modules() -> None:
    net = build_network(ModelSpec.model_validate({**MINIMAL, "norm": {"kind": "layer"}}))
    assert any(isinstance(m, nn.LayerNorm) for m in net.modules())


def test_a_stateful_rnn_has_its_own_defaults() -> None:
    from model.spec import STATEFUL_BPTT, STATEFUL_HIDDEN, ModelSpec

    stateful = ModelSpec(
        name="s", task="regression", input_shape=[2], network={"kind": "rnn", "stateful": True}
    )
    assert stateful.network.hidden == list(STATEFUL_HIDDEN) and stateful.network.bptt == STATEFUL_BPTT
    chosen = ModelSpec(
        name="s", task="regression", input_shape=[2], network={"stateful": True, "hidden": [5]}
    )
    assert chosen.network.hidden == [5] and chosen.network_kind == "rnn"
    plain = ModelSpec(name="m", task="regression", input_shape=[2])
    assert plain.network.hidden == [128, 64]
