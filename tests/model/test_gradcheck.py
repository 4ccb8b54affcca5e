"""Finite-difference checks of the parts whose backward is autograd's or exact.

ON's input gradient is deliberately not the derivative of its forward (control
processes), so only layer scaling, clamping, the eval path and the affine parameters'
gradients can be checked by finite differences.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from model import ActivationClamp, LayerScaling, online_norm
from model.functional import activation_clamp, layer_scaling
from tests.model.helpers import LAYOUTS, C, make_input, rng_for


def _state(seed: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A non-trivial float64 state (mu, var, u, v), as after some training."""
    rng = rng_for(seed)
    return (
        torch.tensor(rng.uniform(-2.0, 2.0, C)),
        torch.tensor(rng.uniform(0.5, 4.0, C)),
        torch.tensor(rng.uniform(-0.5, 0.5, C)),
        torch.tensor(rng.uniform(-0.5, 0.5, C)),
    )


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5), (2, 3, 2, 3)], ids=["NC", "NCL", "NCHW"])
def test_layer_scaling_gradcheck(shape: tuple[int, ...]) -> None:
    """Layer scaling's backward is autograd's: check it against finite differences."""
    gen = torch.Generator().manual_seed(0)
    h = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.5).requires_grad_(True)
    assert gradcheck(lambda t: layer_scaling(t, 1e-5)[0], (h,))
    assert gradcheck(LayerScaling(eps=1e-3), (h,))


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 3)], ids=["NC", "NCHW"])
def test_layer_scaling_values(shape: tuple[int, ...]) -> None:
    """Each sample has RMS ~1 afterwards; ``mean_sq`` is the per-sample mean square before."""
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 1
    out, mean_sq = layer_scaling(h, 0.0)
    dims = tuple(range(1, h.dim()))
    torch.testing.assert_close(mean_sq, (h**2).mean(dim=dims, keepdim=True))
    torch.testing.assert_close(out.pow(2).mean(dim=dims), torch.ones(shape[0], dtype=torch.float64))
    mod = LayerScaling()
    assert mod.last_rms() is None
    mod(h)
    torch.testing.assert_close(mod.last_rms(), float((h**2).mean(dim=dims).sqrt().mean()))


def test_activation_clamp_gradient_is_zero_where_clamped() -> None:
    """Clamping passes the gradient inside ``[-c, c]`` and blocks it outside."""
    h = torch.tensor([[-7.0, -2.9, 0.0, 2.9, 3.2, 100.0]], dtype=torch.float64, requires_grad=True)
    mod = ActivationClamp(3.0)
    out = mod(h)
    torch.testing.assert_close(out, torch.tensor([[-3.0, -2.9, 0.0, 2.9, 3.0, 3.0]], dtype=torch.float64))
    out.backward(torch.full_like(h, 2.0))
    torch.testing.assert_close(h.grad, torch.tensor([[0.0, 2.0, 2.0, 2.0, 0.0, 0.0]], dtype=torch.float64))
    assert mod.last_clamped_fraction() == pytest.approx(3 / 6)
    inner = torch.tensor([[-2.5, 0.3, 1.7]], dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda t: activation_clamp(t, 3.0), (inner,))


@pytest.mark.parametrize("ecm", [None, "ls"], ids=["none", "ls"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_online_norm_affine_gradcheck(layout: str, ecm: str | None) -> None:
    """Training-mode ``online_norm``: exact gradients for ``weight`` and ``bias``.

    The state is cloned inside the function, so every finite-difference evaluation sees
    the same state (the real one would advance on each call).
    """
    _, spatial = LAYOUTS[layout]
    x = torch.tensor(make_input(rng_for("gc", layout), 5, spatial))
    mu, var, u, v = _state("gc-state")
    rng = rng_for("gc-params", layout)
    w = torch.tensor(rng.uniform(0.5, 2.0, C), requires_grad=True)
    b = torch.tensor(rng.uniform(-1.0, 1.0, C), requires_grad=True)

    def fn(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        state = (mu.clone(), var.clone(), u.clone(), v.clone())
        out = online_norm(x, *state, weight, bias, training=True, alpha_fwd=0.9, alpha_bkw=0.8, eps=1e-5)
        return layer_scaling(out, 1e-5)[0] if ecm == "ls" else out

    assert gradcheck(fn, (w, b))
    for got, orig in zip((mu, var, u, v), _state("gc-state"), strict=True):  # never touched
        assert torch.equal(got, orig)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_online_norm_eval_gradcheck(layout: str) -> None:
    """Eval-mode ``online_norm`` is an ordinary function: full gradcheck in x, weight, bias."""
    _, spatial = LAYOUTS[layout]
    x = torch.tensor(make_input(rng_for("gce", layout), 3, spatial), requires_grad=True)
    mu, var, u, v = _state("gce-state")
    w = torch.tensor([0.7, 1.3, -0.4], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64, requires_grad=True)

    def fn(xx: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return online_norm(xx, mu, var, u, v, weight, bias, training=False, eps=1e-5)

    assert gradcheck(fn, (x, w, b))


@pytest.mark.parametrize(
    ("shape", "group_size"),
    [((4, 6), 2), ((4, 6), 3), ((2, 6, 5), 2), ((2, 4, 2, 3), 2), ((3, 4, 2, 2), 1)],
    ids=["NC-g2", "NC-g3", "NCL-g2", "NCHW-g2", "NCHW-g1"],
)
def test_grouped_layer_scaling_gradcheck(shape: tuple[int, ...], group_size: int) -> None:
    """Grouped layer scaling (the authors' ``group_size``): its exact derivative, also
    through a non-contiguous input, checked against finite differences."""
    gen = torch.Generator().manual_seed(2)
    h = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.5).requires_grad_(True)
    assert gradcheck(lambda t: layer_scaling(t, 1e-5, group_size)[0], (h,))
    assert gradcheck(LayerScaling(eps=1e-3, group_size=group_size), (h,))
    wide = (torch.randn(shape[::-1], generator=gen, dtype=torch.float64)).requires_grad_(True)
    assert gradcheck(lambda t: layer_scaling(t.transpose(0, -1), 1e-5, group_size)[0], (wide,))
