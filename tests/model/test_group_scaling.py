"""Grouped layer scaling: values against the float64 oracle, the layer and the spec."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import LayerScaling, OnlineNorm1d, OnlineNorm2d
from model.fast import unsupported_reason
from model.functional import layer_scaling
from model.networks import build_network, online_norm_layers
from model.spec import ModelSpec
from tests.model.oracle import OnlineNormOracle, layer_scaling_backward, layer_scaling_forward


@pytest.mark.parametrize("shape", [(3, 6), (2, 6, 4), (2, 6, 2, 3)], ids=["NC", "NCL", "NCHW"])
@pytest.mark.parametrize("group_size", [1, 2, 3, 6])
def test_grouped_values_and_gradient_match_the_oracle(shape: tuple[int, ...], group_size: int) -> None:
    """Each group of ``group_size`` channels (with its spatial elements) has RMS 1."""
    rng = np.random.default_rng(group_size)
    h = rng.standard_normal(shape) * rng.uniform(0.1, 5.0, (1, shape[1]) + (1,) * (len(shape) - 2))
    g = rng.standard_normal(shape)
    ht = torch.tensor(h, requires_grad=True)
    out, mean_sq = layer_scaling(ht, 1e-5, group_size)
    out.backward(torch.tensor(g))
    want = np.stack([layer_scaling_forward(hn, 1e-5, group_size) for hn in h])
    want_grad = np.stack(
        [layer_scaling_backward(hn, gn, 1e-5, group_size) for hn, gn in zip(h, g, strict=True)]
    )
    np.testing.assert_allclose(out.detach().numpy(), want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ht.grad.numpy(), want_grad, rtol=1e-10, atol=1e-13)
    groups = shape[1] // group_size
    grouped = h.reshape(shape[0], groups, -1)
    np.testing.assert_allclose(mean_sq.numpy().reshape(shape[0], -1), (grouped**2).mean(2), rtol=1e-12)


def test_one_group_of_all_channels_is_the_ungrouped_scaling() -> None:
    h = torch.randn(4, 6, 3, dtype=torch.float64)
    torch.testing.assert_close(layer_scaling(h, 1e-5, 6)[0], layer_scaling(h, 1e-5)[0], rtol=0, atol=0)
    torch.testing.assert_close(layer_scaling(h, 1e-5, -1)[0], layer_scaling(h, 1e-5)[0], rtol=0, atol=0)


def test_group_size_must_divide_the_channels() -> None:
    with pytest.raises(ValueError, match="divisor of the 6 channels"):
        layer_scaling(torch.randn(2, 6), 1e-5, 4)
    with pytest.raises(ValueError, match="divisor of the 6 channels"):
        OnlineNorm1d(6, ls_group_size=4)
    with pytest.raises(ValueError, match="positive"):
        LayerScaling(group_size=0)


@pytest.mark.parametrize("spatial", [(), (3,), (2, 2)], ids=["NC", "NCL", "NCHW"])
def test_online_norm_with_groups_matches_the_oracle(spatial: tuple[int, ...]) -> None:
    """A full ON layer with grouped scaling, forward and backward, over three batches."""
    c, group = 6, 2
    cls = OnlineNorm2d if len(spatial) == 2 else OnlineNorm1d
    mod = cls(c, alpha_fwd=0.9, alpha_bkw=0.8, ls_group_size=group).double()
    rng = np.random.default_rng(7)
    with torch.no_grad():
        mod.weight.copy_(torch.tensor(rng.uniform(0.5, 2.0, c)))
        mod.bias.copy_(torch.tensor(rng.uniform(-1.0, 1.0, c)))
    oracle = OnlineNormOracle(
        c, 0.9, 0.8, weight=mod.weight.detach().numpy(), bias=mod.bias.detach().numpy(), ls_group_size=group
    )
    for n in (1, 4, 3):
        x = 2.0 + 3.0 * rng.standard_normal((n, c, *spatial))
        dz = 0.3 + rng.standard_normal((n, c, *spatial))
        xt = torch.tensor(x, requires_grad=True)
        out = mod(xt)
        out.backward(torch.tensor(dz))
        want, record = oracle.forward(x)
        dx, dw, _ = oracle.backward(record, dz)
        np.testing.assert_allclose(out.detach().numpy(), want, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(xt.grad.numpy(), dx, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(mod.weight.grad.numpy(), dw, rtol=1e-9, atol=1e-12)
        mod.weight.grad = mod.bias.grad = None
    for name, want_state in oracle.state().items():
        np.testing.assert_allclose(getattr(mod, name).numpy(), want_state, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize(
    "network", [{"kind": "mlp", "hidden": [8, 4]}, {"kind": "cnn", "channels": [4, 8]}], ids=["mlp", "cnn"]
)
def test_spec_group_size_reaches_every_hidden_layer(network: dict) -> None:
    shape = [12] if network["kind"] == "mlp" else [1, 6, 6]
    spec = ModelSpec.model_validate(
        {
            "name": "g",
            "task": "classification",
            "input_shape": shape,
            "num_classes": 3,
            "network": network,
            "norm": {"ls_group_size": 2},
        }
    )
    net = build_network(spec)
    hidden = [m for name, m in online_norm_layers(net) if not name.startswith("input_norm")]
    assert hidden and all(m.compensation.group_size == 2 for m in hidden)
    assert unsupported_reason(spec, torch.device("cpu")) is not None  # eager reference path
    plain = spec.model_copy(update={"norm": spec.norm.model_copy(update={"ls_group_size": None})})
    assert all(m.compensation.group_size is None for _, m in online_norm_layers(build_network(plain))[1:])


def test_stateful_rnn_specs_take_the_eager_step() -> None:
    spec = ModelSpec.model_validate(
        {
            "name": "s",
            "task": "regression",
            "input_shape": [3],
            "network": {"kind": "rnn", "stateful": True, "hidden": [4]},
        }
    )
    assert "stateful" in (unsupported_reason(spec, torch.device("cpu")) or "")
