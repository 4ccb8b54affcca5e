"""Checks of the oracle itself, by means independent of both it and the implementation.

The parity tests are only as good as the oracle, so its hand-derived ECM backward is
checked against torch autograd, and its control processes against the closed forms
given in ONLINE_NORM.md.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.model.helpers import C, make_grad, make_input, rng_for
from tests.model.oracle import (
    OnlineNormOracle,
    activation_clamp_backward,
    activation_clamp_forward,
    layer_scaling_backward,
    layer_scaling_forward,
)


@pytest.mark.parametrize("shape", [(C,), (C, 5), (C, 2, 3)])
def test_layer_scaling_backward_matches_autograd(shape: tuple[int, ...]) -> None:
    """The hand-derived layer-scaling gradient equals autograd's on the same formula."""
    rng = rng_for("ls-bwd", shape)
    h, g = rng.normal(0.7, 2.0, shape), rng.normal(0.0, 1.0, shape)
    ht = torch.tensor(h, requires_grad=True)
    zt = ht / torch.sqrt(ht.pow(2).mean() + 1e-3)
    zt.backward(torch.tensor(g))
    np.testing.assert_allclose(layer_scaling_forward(h, 1e-3), zt.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(layer_scaling_backward(h, g, 1e-3), ht.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_activation_clamp_backward_matches_autograd() -> None:
    """The oracle's clamp gradient equals autograd's (0 where clamped)."""
    h = rng_for("ac-bwd").normal(0.0, 4.0, (C, 7))
    g = np.ones_like(h)
    ht = torch.tensor(h, requires_grad=True)
    torch.clamp(ht, -5.0, 5.0).backward(torch.tensor(g))
    np.testing.assert_array_equal(activation_clamp_forward(h, 5.0), np.clip(h, -5, 5))
    np.testing.assert_array_equal(activation_clamp_backward(h, g, 5.0), ht.grad.numpy())
    assert (activation_clamp_backward(h, g, 5.0) == 0).any()


@pytest.mark.parametrize("spatial", [(), (4,)], ids=["NC", "NCL"])
def test_control_processes_follow_closed_forms(spatial: tuple[int, ...]) -> None:
    """``v_n = (1 - k mean(y^2)) v_{n-1} + mean(dy y)`` and ``u_n = a u_{n-1} + mean(g)/s``."""
    rng = rng_for("closed", spatial)
    alpha_bkw = 0.8
    k = 1 - alpha_bkw
    oracle = OnlineNormOracle(C, alpha_fwd=0.9, alpha_bkw=alpha_bkw, ecm=None)
    x, dz = make_input(rng, 20, spatial), make_grad(rng, 20, spatial)
    _, rec = oracle.forward(x)
    oracle.backward(rec, dz)
    u, v = np.zeros(C), np.zeros(C)
    for n in range(20):
        y, s = rec.y[n].reshape(C, -1), rec.s[n]
        dy = dz[n].reshape(C, -1)
        mean_g = dy.mean(axis=1) - k * v * y.mean(axis=1)
        v = (1 - k * (y**2).mean(axis=1)) * v + (dy * y).mean(axis=1)
        u = alpha_bkw * u + mean_g / s
    np.testing.assert_allclose(oracle.v, v, rtol=1e-12)
    np.testing.assert_allclose(oracle.u, u, rtol=1e-12)


def test_forward_statistics_are_exponential_averages() -> None:
    """Without warm-up (1d), ``mu`` is the exponential average of the samples from the prior 0."""
    rng = rng_for("ema")
    a = 0.9
    oracle = OnlineNormOracle(C, alpha_fwd=a, ecm=None)
    x = make_input(rng, 30, ())
    z, _ = oracle.forward(x)
    weights = (1 - a) * a ** np.arange(29, -1, -1)
    np.testing.assert_allclose(oracle.mu, weights @ x, rtol=1e-12)
    np.testing.assert_allclose(z[0], x[0], rtol=1e-5)  # first sample sees the prior (0, 1)
