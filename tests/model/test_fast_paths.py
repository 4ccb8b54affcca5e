"""Fast paths against the plain reference beside them.

* The NumPy batch-of-one step (``functional.NUMPY_STEP``) against the torch step.
* ``linear_scan``'s ``gain`` (folded into the constant-coefficient kernels) against the
  loop, over long batches and decays near 1.
* ``apply_online_norm`` (autograd's C++ entry) against ``OnlineNormFunction.apply``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import OnlineNorm1d
from model import functional as F
from model.scan import linear_scan, linear_scan_reference
from tests.model.helpers import RTOL, C, assert_rel, f32_exact, make_grad, make_input, rng_for

STATE = ("mu", "var", "u", "v", "num_samples_tracked")


def _run(numpy_step: bool, dtype: torch.dtype, affine: bool, warmup: bool, monkeypatch) -> list[dict]:
    """Ten batches of one through a fresh layer; every output, gradient and state."""
    monkeypatch.setattr(F, "NUMPY_STEP", numpy_step)
    mod = OnlineNorm1d(C, alpha_fwd=0.9, alpha_bkw=0.8, affine=affine, ecm=None, warmup=warmup).to(dtype)
    rng = rng_for("np-step", affine, warmup)
    if affine:
        with torch.no_grad():
            mod.weight.copy_(torch.tensor(rng.uniform(0.5, 2.0, C)))
            mod.bias.copy_(torch.tensor(rng.uniform(-1.0, 1.0, C)))
    got = []
    for _ in range(10):
        x = torch.tensor(make_input(rng, 1, ()), dtype=dtype, requires_grad=True)
        out = mod(x)
        out.backward(torch.tensor(make_grad(rng, 1, ()), dtype=dtype))
        res = {"z": out.detach(), "dx": x.grad}
        if affine:
            res["dw"], res["db"] = mod.weight.grad.clone(), mod.bias.grad.clone()
        res.update({name: getattr(mod, name).clone() for name in STATE})
        got.append(res)
    return got


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("warmup", [False, True], ids=["const", "warmup"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
def test_numpy_step_matches_torch_step(affine: bool, warmup: bool, dtype: torch.dtype, monkeypatch) -> None:
    """Same maths, other library: equal to rounding (the outputs share their code: equal bits)."""
    fast = _run(True, dtype, affine, warmup, monkeypatch)
    ref = _run(False, dtype, affine, warmup, monkeypatch)
    rtol = 1e-13 if dtype == torch.float64 else 1e-6
    for i, (a, b) in enumerate(zip(fast, ref, strict=True)):
        for key in a:
            if key == "num_samples_tracked" or (key == "z" and i == 0):
                assert torch.equal(a[key], b[key]), f"sample {i} {key}"
            else:
                assert a[key].dtype == b[key].dtype, key
                assert_rel(a[key], b[key], rtol, f"sample {i} {key}")


def test_numpy_step_dtypes_follow_the_input(monkeypatch) -> None:
    """A float32 input into a float64 layer: outputs and gradients in float32, state float64."""
    monkeypatch.setattr(F, "NUMPY_STEP", True)
    mod = OnlineNorm1d(C, ecm=None).double()
    x = torch.randn(1, C, requires_grad=True)
    out = mod(x)
    out.backward(torch.ones_like(out))
    assert out.dtype == x.grad.dtype == torch.float32
    assert mod.weight.grad.dtype == mod.u.dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("n", [2, 31, 33, 256, 1000, 4161, 20000])
@pytest.mark.parametrize("alpha", [0.5, 0.999, 0.99999])
def test_constant_scan_gain_matches_loop(alpha: float, n: int, dtype: torch.dtype) -> None:
    """``h_n = alpha h_{n-1} + gain b_n`` with the gain in the kernels == the float64 loop."""
    rng = rng_for("gain", alpha, n)
    inp = f32_exact(1.0 + 2.0 * rng.standard_normal((n, 4)))
    h0 = f32_exact(rng.uniform(-3.0, 3.0, 4))
    gain = (1 - alpha) * alpha
    before, last = linear_scan(
        alpha, torch.tensor(inp, dtype=dtype), torch.tensor(h0, dtype=dtype), gain=gain
    )
    h = h0.copy()
    expected = np.empty_like(inp)
    for i in range(n):
        expected[i] = h
        h = alpha * h + gain * inp[i]
    assert_rel(before, expected, RTOL[dtype], "before")
    assert_rel(last, h, RTOL[dtype], "last")


@pytest.mark.parametrize("n", [1, 5, 100])
@pytest.mark.parametrize("constant", [True, False], ids=["constant", "per_sample"])
def test_gain_matches_reference_loop(n: int, constant: bool) -> None:
    """Both coefficient kinds take ``gain``; the reference loop does too."""
    rng = rng_for("gain-ref", n, constant)
    inp, h0 = torch.tensor(rng.standard_normal((n, 3))), torch.tensor(rng.standard_normal(3))
    coef = 0.9 if constant else torch.tensor(rng.uniform(-1.0, 1.0, (n, 3)))
    fast = linear_scan(coef, inp, h0, gain=0.3)
    ref = linear_scan_reference(coef, inp, h0, gain=0.3)
    for a, b in zip(fast, ref, strict=True):
        assert_rel(a, b, 1e-12, "gain")


def test_direct_apply_equals_function_apply() -> None:
    """``apply_online_norm`` skips ``Function.apply``'s Python wrapper, nothing else."""
    rng = rng_for("apply")
    x = torch.tensor(make_input(rng, 7, ()))
    dz = torch.tensor(make_grad(rng, 7, ()))
    results = []
    for call in (F.apply_online_norm, F.OnlineNormFunction.apply):
        state = F.OnlineNormState(
            torch.zeros(C, dtype=torch.float64),
            torch.ones(C, dtype=torch.float64),
            torch.zeros(C, dtype=torch.float64),
            torch.zeros(C, dtype=torch.float64),
            None,
            False,
            0.9,
            0.8,
            1e-5,
        )
        xx = x.clone().requires_grad_(True)
        out = call(xx, None, None, state)
        out.backward(dz)
        results.append((out.detach(), xx.grad, *state[:4]))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("numpy_step", [True, False], ids=["numpy", "torch"])
def test_float64_state_for_float32_inputs_steps_like_a_float64_layer(numpy_step: bool, monkeypatch) -> None:
    """``state_dtype=float64``: a float32 layer's state advances as a float64 layer's
    does on the same (float32-exact) inputs, on the numpy and torch steps and in a scan."""
    monkeypatch.setattr(F, "NUMPY_STEP", numpy_step)
    mixed = OnlineNorm1d(C, alpha_fwd=0.9, alpha_bkw=0.8, ecm=None, state_dtype=torch.float64)
    ref = OnlineNorm1d(C, alpha_fwd=0.9, alpha_bkw=0.8, ecm=None).double()
    rng = rng_for("f64-state", numpy_step)
    for n in (1, 1, 5, 1):
        x = make_input(rng, n, ())
        dz = make_grad(rng, n, ())
        xm = torch.tensor(x, dtype=torch.float32, requires_grad=True)
        xr = torch.tensor(x, requires_grad=True)
        mixed(xm).backward(torch.tensor(dz, dtype=torch.float32))
        ref(xr).backward(torch.tensor(dz))
        assert xm.grad.dtype == torch.float32
        assert_rel(xm.grad, xr.grad, 1e-6, f"dx n={n}")
    for name in STATE[:4]:
        assert getattr(mixed, name).dtype == torch.float64
        assert_rel(getattr(mixed, name), getattr(ref, name), 1e-6, name)
    assert_rel(mixed.mu, ref.mu, 1e-13, "mu (inputs are float32-exact: float64 all the way)")
