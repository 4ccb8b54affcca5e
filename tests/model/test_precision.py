"""Half-precision inputs: the state stays float32, outputs keep the input dtype.

ON's statistics are long exponential averages; in float16/bfloat16 they would drift or
overflow (a variance of raw features easily exceeds float16's 65504), so the layer keeps
its state in float32 and only the activations are low precision.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from model import OnlineNorm
from tests.model.helpers import LAYOUTS, C, make_grad, make_input, rng_for

STATE = ("mu", "var", "u", "v")
HALVES = [torch.float16, torch.bfloat16]
#: Relative tolerance vs the float32 result, about 8 ulps of the half type.
HALF_TOL = {torch.float16: 1e-2, torch.bfloat16: 6e-2}


def _base(layout: str, ecm: str | None) -> OnlineNorm:
    """A float32 layer with seeded, non-trivial affine parameters."""
    cls, _ = LAYOUTS[layout]
    mod = cls(C, alpha_fwd=0.9, alpha_bkw=0.9, ecm=ecm)
    rng = rng_for("half-params", layout)
    with torch.no_grad():
        mod.weight.copy_(torch.tensor(rng.uniform(0.5, 2.0, C)))
        mod.bias.copy_(torch.tensor(rng.uniform(-1.0, 1.0, C)))
    return mod


def _close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    """Relative closeness scaled by the tensor's magnitude (half rounding is per element)."""
    exp = expected.detach().double()
    scale = float(exp.abs().max())
    torch.testing.assert_close(
        actual.detach().double(), exp, rtol=tol, atol=tol * scale, msg=lambda m: f"{what}: {m}"
    )


@pytest.mark.parametrize("cast_module", [True, False], ids=["module_cast", "f32_module"])
@pytest.mark.parametrize("ecm", ["ls", "ac", None], ids=["ls", "ac", "none"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", HALVES, ids=["f16", "bf16"])
def test_half_inputs_keep_float32_state(
    dtype: torch.dtype, layout: str, ecm: str | None, cast_module: bool
) -> None:
    """Outputs and input gradients in ``dtype``, close to float32; state float32 and close."""
    _, spatial = LAYOUTS[layout]
    base = _base(layout, ecm)
    mod = copy.deepcopy(base).to(dtype) if cast_module else copy.deepcopy(base)
    ref = copy.deepcopy(base)
    if cast_module:  # the float32 reference uses the rounded parameters the half layer has
        with torch.no_grad():
            ref.weight.copy_(mod.weight.float())
            ref.bias.copy_(mod.bias.float())
        assert mod.weight.dtype == dtype
    for name in STATE:
        assert getattr(mod, name).dtype == torch.float32, name
    rng = rng_for("half", layout, ecm)
    tol = HALF_TOL[dtype]
    for call in range(3):
        x = torch.tensor(make_input(rng, 16, spatial), dtype=dtype)
        dz = torch.tensor(make_grad(rng, 16, spatial), dtype=dtype)
        xh = x.clone().requires_grad_(True)
        xf = x.float().requires_grad_(True)
        out_h, out_f = mod(xh), ref(xf)
        out_h.backward(dz)
        out_f.backward(dz.float())
        assert out_h.dtype == dtype and xh.grad.dtype == dtype
        assert torch.isfinite(out_h).all() and torch.isfinite(xh.grad).all()
        _close(out_h, out_f, tol, f"call {call} output")
        keep = torch.ones_like(xf.grad, dtype=torch.bool)
        if ecm == "ac":  # rounding may move h across the clamp boundary: a true 0-vs-g flip
            h = ref.compensation.last_input
            keep = (h.abs() - ref.compensation.clamp_val).abs() > 4 * tol * ref.compensation.clamp_val
        _close(xh.grad[keep], xf.grad[keep], tol, f"call {call} grad x")
        _close(mod.weight.grad, ref.weight.grad, tol, f"call {call} grad weight")
        assert mod.weight.grad.dtype == mod.weight.dtype and mod.bias.grad.dtype == mod.bias.dtype
        for name in STATE:
            buf = getattr(mod, name)
            assert buf.dtype == torch.float32, name
            _close(buf, getattr(ref, name), tol, f"call {call} {name}")
    mod.eval()
    ref.eval()
    x = torch.tensor(make_input(rng, 4, spatial), dtype=dtype)
    out = mod(x)
    assert out.dtype == dtype
    _close(out, ref(x.float()), tol, "eval output")


@pytest.mark.parametrize("dtype", HALVES, ids=["f16", "bf16"])
def test_casting_a_trained_layer_keeps_its_state_values(dtype: torch.dtype) -> None:
    """``.to(half)`` must not round the float32 state through half precision: a running
    variance of raw features (here ~1e5) does not even fit in float16."""
    mod = OnlineNorm(C, alpha_fwd=0.5, ecm=None)
    rng = rng_for("cast-state")
    scale = np.array([0.1, 30.0, 400.0]).reshape(1, C)
    with torch.no_grad():
        for _ in range(4):
            mod(torch.tensor(np.pi + scale * rng.standard_normal((32, C)), dtype=torch.float32))
    assert float(mod.var.max()) > 65504.0  # beyond float16's range
    before = {name: getattr(mod, name).clone() for name in STATE}
    mod = mod.to(dtype)
    changed = {}
    for name in STATE:
        buf = getattr(mod, name)
        assert buf.dtype == torch.float32, name
        if not torch.equal(buf, before[name]):
            changed[name] = (before[name].tolist(), buf.tolist())
    assert not changed, f"casting to {dtype} changed the state (before, after): {changed}"


def test_double_module_keeps_double_state() -> None:
    """``.double()`` is the one cast that does change the state dtype (float64 end to end)."""
    mod = OnlineNorm(C).double()
    for name in STATE:
        assert getattr(mod, name).dtype == torch.float64, name
    out = mod(torch.tensor(make_input(rng_for("dbl"), 3, (2,))))
    assert out.dtype == torch.float64
    mod.float()
    for name in STATE:
        assert getattr(mod, name).dtype == torch.float32, name
