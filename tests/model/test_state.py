"""How the ON state evolves: batch vs sequence, one advance per pass, eval, warm-up.

The state is the whole point of ON (it replaces the batch), so these tests pin when it
moves: exactly once per training forward (``mu``, ``var``), once per backward (``u``,
``v``), never in eval, and identically whether samples arrive in one batch or singly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import OnlineNorm
from tests.model.helpers import LAYOUTS, RTOL, C, assert_rel, make_grad, make_input, rng_for
from tests.model.oracle import (
    OnlineNormOracle,
    activation_clamp_backward,
    activation_clamp_forward,
    layer_scaling_backward,
    layer_scaling_forward,
)

HP = {"alpha_fwd": 0.9, "alpha_bkw": 0.8, "clamp_val": 2.0}
STATE = ("mu", "var", "u", "v")
TOL = 1e-10


def _module(layout: str, ecm: str | None = "ls", affine: bool = True, warmup: bool = False) -> OnlineNorm:
    """A float64 layer with non-trivial affine parameters (seeded)."""
    cls, _ = LAYOUTS[layout]
    mod = cls(C, affine=affine, ecm=ecm, warmup=warmup, **HP).double()
    if affine:
        rng = rng_for("params", layout)
        with torch.no_grad():
            mod.weight.copy_(torch.tensor(rng.uniform(0.5, 2.0, C)))
            mod.bias.copy_(torch.tensor(rng.uniform(-1.0, 1.0, C)))
    return mod


def _oracle(mod: OnlineNorm) -> OnlineNormOracle:
    """The oracle twin of ``mod`` (same parameters and hyper-parameters, fresh state)."""
    w = None if mod.weight is None else mod.weight.detach().numpy()
    b = None if mod.bias is None else mod.bias.detach().numpy()
    return OnlineNormOracle(C, weight=w, bias=b, ecm=mod.ecm, warmup=mod.warmup, **HP)


def _snapshot(mod: OnlineNorm) -> dict[str, torch.Tensor]:
    """Clones of the four buffers and the sample counter."""
    snap = {name: getattr(mod, name).clone() for name in STATE}
    snap["seen"] = mod.num_samples_tracked.clone()
    return snap


def _train_call(mod: OnlineNorm, x: np.ndarray, dz: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward + backward; returns (output, grad x)."""
    xt = torch.tensor(x, requires_grad=True)
    out = mod(xt)
    out.backward(torch.tensor(dz))
    return out.detach(), xt.grad


# -- batch equals sequence ----------------------------------------------------------------------
@pytest.mark.parametrize("split", [[1] * 13, [1, 2, 7, 3], [6, 7]], ids=["singles", "1-2-7-3", "6-7"])
@pytest.mark.parametrize("warmup", [False, True], ids=["const", "warmup"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
@pytest.mark.parametrize("ecm", ["ls", "ac", None], ids=["ls", "ac", "none"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_batch_equals_sequence(
    layout: str, ecm: str | None, affine: bool, warmup: bool, split: list[int]
) -> None:
    """One call on 13 samples == the same samples in smaller calls, in order."""
    _, spatial = LAYOUTS[layout]
    rng = rng_for("bes", layout, ecm, affine, warmup)
    warm_x = make_input(rng, 5, spatial)  # a first call, so the state is not the prior
    x, dz = make_input(rng, 13, spatial), make_grad(rng, 13, spatial)
    whole, parts = _module(layout, ecm, affine, warmup), _module(layout, ecm, affine, warmup)
    for mod in (whole, parts):
        _train_call(mod, warm_x, make_grad(rng_for("warm"), 5, spatial))
        if affine:
            mod.weight.grad = mod.bias.grad = None
    out_whole, dx_whole = _train_call(whole, x, dz)
    outs, dxs, start = [], [], 0
    for size in split:
        o, g = _train_call(parts, x[start : start + size], dz[start : start + size])
        outs.append(o)
        dxs.append(g)
        start += size
    assert_rel(torch.cat(outs), out_whole, TOL, "output")
    assert_rel(torch.cat(dxs), dx_whole, TOL, "grad x")
    if affine:  # gradients accumulate over the calls
        assert_rel(parts.weight.grad, whole.weight.grad, TOL, "grad weight")
        assert_rel(parts.bias.grad, whole.bias.grad, TOL, "grad bias")
    for name in STATE:
        assert_rel(getattr(parts, name), getattr(whole, name), TOL, name)
    assert int(parts.num_samples_tracked) == int(whole.num_samples_tracked) == 18


# -- one advance per pass -------------------------------------------------------------------------
@pytest.mark.parametrize("warmup", [False, True], ids=["const", "warmup"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_forward_moves_only_mu_var_and_backward_only_u_v(layout: str, warmup: bool) -> None:
    """Forward advances ``mu``/``var`` once and leaves ``u``/``v``; backward the reverse."""
    _, spatial = LAYOUTS[layout]
    rng = rng_for("once", layout, warmup)
    mod = _module(layout, warmup=warmup)
    oracle = _oracle(mod)
    # a first full call so that u and v are non-zero
    x0, dz0 = make_input(rng, 4, spatial), make_grad(rng, 4, spatial)
    _train_call(mod, x0, dz0)
    _, rec0 = oracle.forward(x0)
    oracle.backward(rec0, dz0)

    x1, dz1 = make_input(rng, 6, spatial), make_grad(rng, 6, spatial)
    before = _snapshot(mod)
    xt = torch.tensor(x1, requires_grad=True)
    out = mod(xt)
    after_fwd = _snapshot(mod)
    _, rec1 = oracle.forward(x1)
    for name in ("mu", "var"):
        assert not torch.equal(after_fwd[name], before[name]), f"forward did not move {name}"
        assert_rel(after_fwd[name], oracle.state()[name], TOL, f"{name} after forward")
    for name in ("u", "v"):
        assert torch.equal(after_fwd[name], before[name]), f"forward moved {name}"
    assert int(after_fwd["seen"]) == int(before["seen"]) + 6

    out.backward(torch.tensor(dz1))
    after_bwd = _snapshot(mod)
    oracle.backward(rec1, dz1)
    for name in ("mu", "var", "seen"):
        assert torch.equal(after_bwd[name], after_fwd[name]), f"backward moved {name}"
    for name in ("u", "v"):
        assert not torch.equal(after_bwd[name], after_fwd[name]), f"backward did not move {name}"
        assert_rel(after_bwd[name], oracle.state()[name], TOL, f"{name} after backward")


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_two_forwards_advance_twice_and_backwards_run_in_call_order(layout: str) -> None:
    """Two forwards advance ``mu``/``var`` twice; each backward then advances ``u``/``v`` once,
    using the ``y``/``s`` saved by its own forward, in whatever order the backwards run."""
    _, spatial = LAYOUTS[layout]
    rng = rng_for("twice", layout)
    mod = _module(layout, ecm="ac")
    oracle = _oracle(mod)
    xa, xb = make_input(rng, 5, spatial), make_input(rng, 3, spatial)
    dza, dzb = make_grad(rng, 5, spatial), make_grad(rng, 3, spatial)
    ta, tb = torch.tensor(xa, requires_grad=True), torch.tensor(xb, requires_grad=True)
    out_a, out_b = mod(ta), mod(tb)
    za, rec_a = oracle.forward(xa)
    zb, rec_b = oracle.forward(xb)
    assert_rel(out_a, za, TOL, "first output")
    assert_rel(out_b, zb, TOL, "second output")
    for name in ("mu", "var"):
        assert_rel(getattr(mod, name), oracle.state()[name], TOL, name)
    assert int(mod.num_samples_tracked) == 8
    # backward of the second call first, then of the first
    out_b.backward(torch.tensor(dzb))
    dxb, _, _ = oracle.backward(rec_b, dzb)
    assert_rel(tb.grad, dxb, TOL, "grad of second call")
    out_a.backward(torch.tensor(dza))
    dxa, _, _ = oracle.backward(rec_a, dza)
    assert_rel(ta.grad, dxa, TOL, "grad of first call")
    for name in STATE:
        assert_rel(getattr(mod, name), oracle.state()[name], TOL, name)


def test_forward_without_grad_advances_forward_state_only() -> None:
    """A training forward under ``no_grad`` still advances ``mu``/``var`` (once), never ``u``/``v``."""
    mod = _module("2d_NCHW")
    oracle = _oracle(mod)
    x = make_input(rng_for("nograd"), 4, (3, 3))
    with torch.no_grad():
        out = mod(torch.tensor(x))
    z, _ = oracle.forward(x)
    assert_rel(out, z, TOL, "output")
    for name, val in oracle.state().items():
        assert_rel(getattr(mod, name), val, TOL, name)
    assert torch.count_nonzero(mod.u) == 0 and torch.count_nonzero(mod.v) == 0


# -- eval mode ----------------------------------------------------------------------------------------
def _ecm_np(mod: OnlineNorm, h: np.ndarray) -> np.ndarray:
    """The layer's ECM on a batch, sample by sample (from the oracle's definitions)."""
    if mod.ecm == "ls":
        return np.stack([layer_scaling_forward(hn, mod.compensation.eps) for hn in h])
    if mod.ecm == "ac":
        return np.stack([activation_clamp_forward(hn, mod.compensation.clamp_val) for hn in h])
    return h


def _ecm_backward_np(mod: OnlineNorm, h: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Gradient of :func:`_ecm_np` w.r.t. ``h``."""
    if mod.ecm == "ls":
        return np.stack(
            [layer_scaling_backward(hn, gn, mod.compensation.eps) for hn, gn in zip(h, g, strict=True)]
        )
    if mod.ecm == "ac":
        return np.stack(
            [
                activation_clamp_backward(hn, gn, mod.compensation.clamp_val)
                for hn, gn in zip(h, g, strict=True)
            ]
        )
    return g


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("warmup", [False, True], ids=["const", "warmup"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
@pytest.mark.parametrize("ecm", ["ls", "ac", None], ids=["ls", "ac", "none"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_eval_uses_frozen_state_and_changes_nothing(
    layout: str, ecm: str | None, affine: bool, warmup: bool, dtype: torch.dtype
) -> None:
    """Eval: ``ECM((x - mu) / sqrt(var + eps) * w + b)``; no buffer moves, not even in backward."""
    _, spatial = LAYOUTS[layout]
    rng = rng_for("eval", layout, ecm, affine, warmup)
    mod = _module(layout, ecm, affine, warmup)
    for _ in range(2):
        _train_call(mod, make_input(rng, 6, spatial), make_grad(rng, 6, spatial))
    mod = mod.to(dtype)
    mod.eval()
    before = _snapshot(mod)
    x, dz = make_input(rng, 5, spatial), make_grad(rng, 5, spatial)
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    out = mod(xt)
    out.backward(torch.tensor(dz, dtype=dtype))
    after = _snapshot(mod)
    for name, val in before.items():
        assert torch.equal(after[name], val), f"eval changed {name}"

    shape = (1, C) + (1,) * len(spatial)
    mu = before["mu"].double().numpy().reshape(shape)
    s = np.sqrt(before["var"].double().numpy() + mod.eps).reshape(shape)
    w = mod.weight.detach().double().numpy().reshape(shape) if affine else np.ones(shape)
    b = mod.bias.detach().double().numpy().reshape(shape) if affine else np.zeros(shape)
    h = (x - mu) / s * w + b
    rtol = RTOL[dtype]
    assert_rel(out, _ecm_np(mod, h), rtol, "eval output")
    # eval is a plain function of x: autograd's gradient, no control processes
    assert_rel(xt.grad, _ecm_backward_np(mod, h, dz) * w / s, rtol, "eval grad x")


# -- warm-up -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_warmup_gives_exact_pooled_statistics(layout: str) -> None:
    """With warm-up (and alpha_fwd not yet reached) the prior counts as one sample of mean 0,
    variance 1, so after n samples ``mu`` and ``var`` are the exact pooled mean and variance."""
    _, spatial = LAYOUTS[layout]
    rng = rng_for("pooled", layout)
    cls, _ = LAYOUTS[layout]
    mod = cls(C, alpha_fwd=0.9999, warmup=True).double()
    xs = [make_input(rng, n, spatial) for n in (1, 4, 20)]
    for x in xs:
        _train_call(mod, x, make_grad(rng, x.shape[0], spatial))
    allx = np.concatenate(xs)  # (n, C, *S)
    flat = allx.reshape(allx.shape[0], C, -1)
    n = allx.shape[0]
    means = flat.mean(axis=2)  # (n, C)
    mean_sq = (flat**2).mean(axis=2)
    mu = means.sum(axis=0) / (n + 1)
    second_moment = (1.0 + mean_sq.sum(axis=0)) / (n + 1)  # prior: E[x^2] = var + mean^2 = 1
    assert_rel(mod.mu, mu, 1e-10, "mu")
    assert_rel(mod.var, second_moment - mu**2, 1e-10, "var")
    assert int(mod.num_samples_tracked) == n


def test_warmup_switches_to_alpha_fwd() -> None:
    """Past ``t = alpha/(1-alpha) - 1`` samples the decay is the constant ``alpha_fwd``: a
    warmed-up layer and a constant one then move identically from the same state."""
    rng = rng_for("switch")
    warm = OnlineNorm(C, alpha_fwd=0.75, warmup=True, ecm=None).double()
    const = OnlineNorm(C, alpha_fwd=0.75, warmup=False, ecm=None).double()
    with torch.no_grad():
        warm(torch.tensor(make_input(rng, 2, (2,))))  # t = 0, 1: alpha = 1/2, 2/3
        assert int(warm.num_samples_tracked) == 2
        const.mu.copy_(warm.mu)
        const.var.copy_(warm.var)
        x = torch.tensor(make_input(rng, 9, (2,)))  # t = 2 on: (t+1)/(t+2) >= 3/4
        assert_rel(warm(x), const(x), 1e-12, "output")
    assert_rel(warm.mu, const.mu, 1e-12, "mu")
    assert_rel(warm.var, const.var, 1e-12, "var")


def test_warmup_counter_resumes_from_loaded_state() -> None:
    """``num_samples_tracked`` is the warm-up clock: a layer restored from a state dict
    continues exactly where the original would have."""
    rng = rng_for("resume")
    a = OnlineNorm(C, alpha_fwd=0.99, warmup=True).double()
    x1, x2 = (torch.tensor(make_input(rng, n, ())) for n in (7, 5))
    with torch.no_grad():
        a(x1)
        b = OnlineNorm(C, alpha_fwd=0.99, warmup=True).double()
        b.load_state_dict(a.state_dict())
        assert_rel(b(x2), a(x2), 1e-14, "output after reload")
    assert int(b.num_samples_tracked) == 12
