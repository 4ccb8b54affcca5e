"""Online Normalization layers against the sequential float64 oracle (``oracle.py``).

The layers process a whole batch at once with prefix scans; the definition is a loop
over samples. These tests check that both agree over several consecutive calls (the
state carries over), for every layout, error-compensation mode, affine and warm-up.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from model import OnlineNorm
from tests.model.helpers import LAYOUTS, RTOL, C, assert_rel, make_grad, make_input, rng_for
from tests.model.oracle import OnlineNormOracle

#: Hyper-parameters of the parity grid: fast enough decays that every batch size moves
#: the statistics, a warm-up that ends inside the stream ((t+1)/(t+2) >= 0.95 at t = 18)
#: and a clamp that actually clamps.
HP = {"alpha_fwd": 0.95, "alpha_bkw": 0.9, "eps": 1e-5, "ls_eps": 1e-5, "clamp_val": 2.0}
BATCHES = [1, 2, 7, 64, 1024]
ECMS = ["ls", "ac", None]
STATE = ("mu", "var", "u", "v")


def _calls(n: int) -> int:
    """Consecutive calls per test: enough for state to carry over, few for big batches."""
    return 2 if n >= 1024 else 3


def _params(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Non-trivial affine parameters, exactly representable in float32."""
    w = np.asarray(rng.uniform(0.5, 2.0, C), dtype=np.float32).astype(np.float64)
    b = np.asarray(rng.uniform(-1.0, 1.0, C), dtype=np.float32).astype(np.float64)
    return w, b


@functools.cache
def oracle_run(layout: str, n: int, ecm: str | None, affine: bool, warmup: bool, hp: tuple) -> dict:
    """Inputs and the oracle's per-call results; cached so float32 and float64 share them."""
    hpd = dict(hp)
    _, spatial = LAYOUTS[layout]
    rng = rng_for(layout, n, ecm, affine, warmup, hp)
    w, b = _params(rng)
    oracle = OnlineNormOracle(
        C, weight=w if affine else None, bias=b if affine else None, ecm=ecm, warmup=warmup, **hpd
    )
    calls = []
    for _ in range(_calls(n)):
        x = make_input(rng, n, spatial)
        dz = make_grad(rng, n, spatial)
        z, record = oracle.forward(x)
        dx, dw, db = oracle.backward(record, dz)
        calls.append({"x": x, "dz": dz, "z": z, "dx": dx, "dw": dw, "db": db, **oracle.state()})
    return {"w": w, "b": b, "calls": calls}


def build_module(
    layout: str, ecm: str | None, affine: bool, warmup: bool, dtype: torch.dtype, **hp
) -> OnlineNorm:
    """The layer class of ``layout``, cast to ``dtype`` (float64 casts the state too)."""
    cls, _ = LAYOUTS[layout]
    mod = cls(C, affine=affine, ecm=ecm, warmup=warmup, **hp)
    return mod.to(dtype)


def run_calls(mod: OnlineNorm, calls: list[dict], dtype: torch.dtype) -> list[dict]:
    """Forward + backward of each call on the module; returns what each call produced."""
    results = []
    for call in calls:
        x = torch.tensor(call["x"], dtype=dtype, requires_grad=True)
        if mod.affine:
            mod.weight.grad = None
            mod.bias.grad = None
        out = mod(x)
        out.backward(torch.tensor(call["dz"], dtype=dtype))
        res = {"z": out.detach(), "dx": x.grad}
        if mod.affine:
            res["dw"], res["db"] = mod.weight.grad, mod.bias.grad
        res.update({name: getattr(mod, name).clone() for name in STATE})
        res["seen"] = int(mod.num_samples_tracked)
        results.append(res)
    return results


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("warmup", [False, True], ids=["const", "warmup"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
@pytest.mark.parametrize("ecm", ECMS, ids=["ls", "ac", "none"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("n", BATCHES)
def test_matches_oracle_over_consecutive_calls(
    n: int, layout: str, ecm: str | None, affine: bool, warmup: bool, dtype: torch.dtype
) -> None:
    """Outputs, all gradients and the four buffers equal the sequential definition."""
    ref = oracle_run(layout, n, ecm, affine, warmup, tuple(sorted(HP.items())))
    mod = build_module(layout, ecm, affine, warmup, dtype, **HP)
    if affine:
        with torch.no_grad():
            mod.weight.copy_(torch.from_numpy(ref["w"]))
            mod.bias.copy_(torch.from_numpy(ref["b"]))
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    for name in STATE:
        assert getattr(mod, name).dtype == state_dtype, name
    rtol = RTOL[dtype]
    got = run_calls(mod, ref["calls"], dtype)
    for i, (res, exp) in enumerate(zip(got, ref["calls"], strict=True)):
        assert res["z"].dtype == dtype and res["dx"].dtype == dtype
        assert_rel(res["z"], exp["z"], rtol, f"call {i} output")
        assert_rel(res["dx"], exp["dx"], rtol, f"call {i} grad x")
        if affine:
            assert_rel(res["dw"], exp["dw"], rtol, f"call {i} grad weight")
            assert_rel(res["db"], exp["db"], rtol, f"call {i} grad bias")
        for name in STATE:
            assert_rel(res[name], exp[name], rtol, f"call {i} buffer {name}")
        assert res["seen"] == (i + 1) * n


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_default_hyperparameters_match_oracle(layout: str, dtype: torch.dtype) -> None:
    """The paper's defaults (0.999 / 0.99, layer scaling) on a longer stream."""
    rng = rng_for("defaults", layout)
    _, spatial = LAYOUTS[layout]
    cls, _ = LAYOUTS[layout]
    mod = cls(C).to(dtype)
    oracle = OnlineNormOracle(C, weight=np.ones(C), bias=np.zeros(C))
    calls = []
    for n in (300, 1, 500):
        x, dz = make_input(rng, n, spatial), make_grad(rng, n, spatial)
        z, record = oracle.forward(x)
        dx, dw, db = oracle.backward(record, dz)
        calls.append({"x": x, "dz": dz, "z": z, "dx": dx, "dw": dw, "db": db, **oracle.state()})
    got = run_calls(mod, calls, dtype)
    rtol = RTOL[dtype]
    for i, (res, exp) in enumerate(zip(got, calls, strict=True)):
        for key in ("z", "dx", "dw", "db", *STATE):
            assert_rel(res[key], exp[key], rtol, f"call {i} {key}")


def test_generic_online_norm_three_spatial_dims() -> None:
    """``OnlineNorm`` takes any ``(N, C, *S)``; here S has three dims."""
    rng = rng_for("generic")
    hp = {"alpha_fwd": 0.9, "alpha_bkw": 0.8}
    mod = OnlineNorm(C, ecm="ls", **hp).double()
    oracle = OnlineNormOracle(C, weight=np.ones(C), bias=np.zeros(C), ecm="ls", **hp)
    for _ in range(3):
        x, dz = make_input(rng, 9, (2, 3, 2)), make_grad(rng, 9, (2, 3, 2))
        z, record = oracle.forward(x)
        dx, dw, db = oracle.backward(record, dz)
        xt = torch.tensor(x, requires_grad=True)
        mod.weight.grad = mod.bias.grad = None
        out = mod(xt)
        out.backward(torch.tensor(dz))
        assert_rel(out, z, 1e-10, "output")
        assert_rel(xt.grad, dx, 1e-10, "grad x")
        assert_rel(mod.weight.grad, dw, 1e-10, "grad weight")
        assert_rel(mod.bias.grad, db, 1e-10, "grad bias")
        for name, val in oracle.state().items():
            assert_rel(getattr(mod, name), val, 1e-10, name)
