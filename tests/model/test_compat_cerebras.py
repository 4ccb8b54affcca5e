"""The authors' PyTorch API (``online_norm_pytorch``) over our layers: constructor,
defaults, ``ecm`` spellings, checkpoint keys both ways, and their documented usage.

The checkpoint under their key names comes from the float64 NumPy oracle
(:mod:`tests.model.oracle`), an implementation independent of :mod:`model`.
"""

from __future__ import annotations

import inspect
import io

import numpy as np
import pytest
import torch
from torch import nn

import model
from model.compat import cerebras
from model.compat.cerebras import OnlineNorm1d, OnlineNorm2d
from model.layers import ActivationClamp, LayerScaling
from tests.model.oracle import OnlineNormOracle

#: Their constructor, as their docs and signature give it (name, default)
THEIR_SIGNATURE = [
    ("num_features", inspect.Parameter.empty),
    ("batch_size", None),
    ("alpha_fwd", 0.999),
    ("alpha_bkw", 0.99),
    ("eps", 1e-05),
    ("affine", True),
    ("ecm", "ac"),
    ("ls_eps", 1e-05),
    ("clamp_val", 5),
]
THEIR_KEYS = {"norm.m", "norm.var", "norm.u", "norm.v", "weight", "bias"}


@pytest.mark.parametrize("cls", [OnlineNorm1d, OnlineNorm2d])
def test_constructor_and_defaults_are_theirs(cls: type) -> None:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    got = [(p.name, p.default) for p in params if p.kind is not p.VAR_KEYWORD]
    assert got == THEIR_SIGNATURE
    norm = cls(16, 32, 0.99, 0.9, 1e-4, True, "ls", 1e-3, 3)  # every argument positional
    assert norm.batch_size == 32 and norm.alpha_fwd == 0.99 and norm.alpha_bkw == 0.9 and norm.eps == 1e-4
    assert isinstance(norm.compensation, LayerScaling) and norm.compensation.eps == 1e-3
    default = cls(16)
    assert isinstance(default.compensation, ActivationClamp) and default.compensation.clamp_val == 5
    assert (default.alpha_fwd, default.alpha_bkw, default.eps, default.affine) == (0.999, 0.99, 1e-5, True)
    assert isinstance(default, model.OnlineNorm)  # our layer underneath: our API still works
    assert "batch-size agnostic" in cls.__doc__ or "batch-size agnostic" in OnlineNorm1d.__doc__


@pytest.mark.parametrize(
    ("ecm", "want"),
    [
        ("ls", LayerScaling),
        ("LS", LayerScaling),
        ("ac", ActivationClamp),
        ("Ac", ActivationClamp),
        ("", nn.Identity),
        (None, nn.Identity),
    ],
)
def test_ecm_spellings(ecm: str | None, want: type) -> None:
    assert type(OnlineNorm1d(4, ecm=ecm).compensation) is want


def test_unknown_ecm_means_none_with_a_warning_and_bad_arguments_are_refused() -> None:
    with pytest.warns(UserWarning, match="'clamp'"):
        assert isinstance(OnlineNorm1d(4, ecm="clamp").compensation, nn.Identity)
    with pytest.raises(ValueError, match="batch_size"):
        OnlineNorm1d(4, 0)
    with pytest.raises(TypeError, match="colour"):
        OnlineNorm1d(4, ecm="ls", colour=1)
    with pytest.raises(ValueError, match="divisor"):
        OnlineNorm1d(6, ecm="ls", group_size=4)


def test_their_documented_usage() -> None:
    """The examples of their README, verbatim in spirit: 1d (N, C) and 2d (N, C, H, W)."""
    torch.manual_seed(0)
    norm = OnlineNorm1d(100)
    assert OnlineNorm1d(100, affine=False).weight is None
    x = torch.randn(20, 100, requires_grad=True)
    out = norm(x)
    out.sum().backward()
    assert out.shape == (20, 100) and x.grad.shape == (20, 100) and norm.weight.grad is not None
    norm2 = OnlineNorm2d(100)
    assert OnlineNorm2d(100, affine=False).bias is None
    out2 = norm2(torch.randn(20, 100, 35, 45))
    assert out2.shape == (20, 100, 35, 45)
    assert float(norm2.norm.m.abs().sum()) > 0  # their `norm` submodule's state is readable
    assert norm2.norm.m is norm2.mu and norm2.norm.afwd == 0.999


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("cls", [OnlineNorm1d, OnlineNorm2d])
def test_state_dict_keys_are_theirs_and_load_both_ways(cls: type, affine: bool) -> None:
    a = cls(5, affine=affine, ecm="ls")
    shape = (7, 5) if cls is OnlineNorm1d else (7, 5, 2, 3)
    a((torch.randn(shape) * 3 + 2).requires_grad_(True)).sum().backward()
    sd = a.state_dict()
    assert set(sd) == (THEIR_KEYS if affine else {k for k in THEIR_KEYS if k.startswith("norm.")})
    b = cls(5, affine=affine, ecm="ls")
    b.load_state_dict(sd)  # theirs -> ours (strict)
    for name in ("mu", "var", "u", "v"):
        assert torch.equal(getattr(b, name), getattr(a, name)), name
    native = model.OnlineNorm2d(5) if cls is OnlineNorm2d else model.OnlineNorm1d(5)
    native.load_state_dict(a.state_dict(), strict=False)  # their keys don't match ours ...
    assert torch.equal(native.mu, torch.zeros(5))
    cerebras.load_cerebras_state_dict(native, cerebras.to_cerebras_keys(native.state_dict()))
    cerebras.load_cerebras_state_dict(native, {k: v for k, v in sd.items()}, strict=affine)  # ... this does
    assert torch.equal(native.mu, a.mu) and torch.equal(native.v, a.v)
    c = cls(5, affine=affine, ecm="ls")
    c.load_state_dict(native.state_dict(), strict=False)  # our own keys load into the compat layer
    assert torch.equal(c.var, a.var)


def test_network_checkpoints_convert_both_ways() -> None:
    """A whole network: their keys into a network of our layers, and back."""
    torch.manual_seed(1)
    theirs = nn.Sequential(nn.Linear(3, 4), OnlineNorm1d(4, ecm="ls"), nn.ReLU(), nn.Linear(4, 2))
    theirs(torch.randn(9, 3)).sum().backward()
    ours = nn.Sequential(nn.Linear(3, 4), model.OnlineNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    assert "1.norm.m" in theirs.state_dict()
    cerebras.load_cerebras_state_dict(ours, theirs.state_dict())
    x = torch.randn(5, 3)
    theirs.eval()
    ours.eval()
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)
    back = nn.Sequential(nn.Linear(3, 4), OnlineNorm1d(4, ecm="ls"), nn.ReLU(), nn.Linear(4, 2)).eval()
    converted = cerebras.to_cerebras_keys(ours.state_dict())
    assert set(converted) == set(theirs.state_dict())
    back.load_state_dict(converted)
    torch.testing.assert_close(back(x), theirs(x), rtol=0, atol=0)
    assert cerebras.from_cerebras_keys({"norm.var": torch.ones(1)}) == {"norm.var": torch.ones(1)}


def _oracle_checkpoint(
    ecm: str | None, group_size: int | None
) -> tuple[OnlineNormOracle, dict, np.random.Generator]:
    """Train the float64 oracle on a stream, then save its state under their key names."""
    c = 6
    rng = np.random.default_rng(12)
    oracle = OnlineNormOracle(
        c,
        0.95,
        0.9,
        weight=rng.uniform(0.5, 2.0, c),
        bias=rng.uniform(-1, 1, c),
        ecm=ecm,
        ls_group_size=group_size,
    )
    for n in (1, 5, 3, 1):
        x = rng.uniform(-5, 5, c) + rng.uniform(0.5, 3, c) * rng.standard_normal((n, c))
        _, record = oracle.forward(x)
        oracle.backward(record, 0.2 + rng.standard_normal((n, c)))
    state = {
        "norm.m": oracle.mu,
        "norm.var": oracle.var,
        "norm.u": oracle.u,
        "norm.v": oracle.v,
        "weight": oracle.weight,
        "bias": oracle.bias,
    }
    buf = io.BytesIO()
    torch.save({k: torch.tensor(v) for k, v in state.items()}, buf)
    return oracle, torch.load(io.BytesIO(buf.getvalue()), weights_only=True), rng


@pytest.mark.parametrize(("ecm", "group_size"), [("ls", None), ("LS", 2), ("ac", None), ("", None)])
def test_a_checkpoint_of_an_independent_float64_implementation_continues_here(
    ecm: str, group_size: int | None
) -> None:
    """Load, predict (eval), then train on: every output, gradient and state agrees."""
    ours_ecm = ecm.lower() or None
    oracle, checkpoint, rng = _oracle_checkpoint(ours_ecm, group_size)
    kwargs = {} if group_size is None else {"group_size": group_size}
    layer = OnlineNorm1d(6, 8, 0.95, 0.9, ecm=ecm, **kwargs).double()
    layer.load_state_dict(checkpoint)
    x = rng.standard_normal((4, 6)) * 2
    layer.eval()
    np.testing.assert_allclose(layer(torch.tensor(x)).detach().numpy(), oracle.eval_forward(x), rtol=1e-12)
    layer.train()
    for n in (8, 1, 3):  # any batch size, whatever batch_size said
        x = rng.standard_normal((n, 6)) * 2 + 1
        dz = rng.standard_normal((n, 6))
        xt = torch.tensor(x, requires_grad=True)
        out = layer(xt)
        out.backward(torch.tensor(dz))
        want, record = oracle.forward(x)
        dx, dw, db = oracle.backward(record, dz)
        np.testing.assert_allclose(out.detach().numpy(), want, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(xt.grad.numpy(), dx, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(layer.weight.grad.numpy(), dw, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(layer.bias.grad.numpy(), db, rtol=1e-9, atol=1e-12)
        layer.weight.grad = layer.bias.grad = None
    saved = layer.state_dict()
    for ours, theirs in (("mu", "norm.m"), ("var", "norm.var"), ("u", "norm.u"), ("v", "norm.v")):
        np.testing.assert_allclose(saved[theirs].numpy(), getattr(oracle, ours), rtol=1e-10, atol=1e-13)


def test_float32_layer_loads_a_float64_checkpoint() -> None:
    """Their layers keep float32 state: a float64 checkpoint loads, rounded once."""
    oracle, checkpoint, rng = _oracle_checkpoint("ls", None)
    layer = OnlineNorm1d(6, None, 0.95, 0.9, ecm="ls").eval()
    layer.load_state_dict(checkpoint)
    assert layer.mu.dtype == torch.float32
    x = rng.standard_normal((3, 6))
    got = layer(torch.tensor(x, dtype=torch.float32)).double().detach().numpy()
    np.testing.assert_allclose(got, oracle.eval_forward(x), rtol=1e-5, atol=1e-6)


def test_their_layer_scaling_and_clamp_modules() -> None:
    ls = cerebras.LayerScaling1d(group_size=2)
    h = torch.randn(3, 4)
    torch.testing.assert_close(ls(h)[:, :2].pow(2).mean(1), torch.ones(3), rtol=1e-4, atol=1e-4)
    assert cerebras.LayerScaling().group_size is None
    assert cerebras.ActivationClamp(2).clamp_value == 2.0
