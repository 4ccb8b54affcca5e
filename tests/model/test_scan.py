"""The vectorized linear scan against a plain float64 loop.

``linear_scan`` avoids ``alpha**-n`` with blocked Toeplitz products (constant
coefficient) and Hillis-Steele doubling (per-sample coefficient); both must equal the
sequential recurrence, across block boundaries and for decays from 0.5 to 0.99999.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.scan import linear_scan, linear_scan_reference
from tests.model.helpers import RTOL, assert_rel, f32_exact, rng_for

ALPHAS = [0.5, 0.9, 0.999, 0.99999]
#: Lengths around the block size (64) and its square (4096), where the blocked scan recurses.
LENGTHS = [1, 2, 3, 63, 64, 65, 129, 1000, 4096, 4161]
DTYPES = [torch.float64, torch.float32]
CH = 4


def loop_scan(coef: np.ndarray, inp: np.ndarray, h0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``h_n = coef_n h_{n-1} + inp_n`` in float64, one step at a time."""
    coef = np.broadcast_to(coef, inp.shape)
    before = np.empty_like(inp)
    h = h0.copy()
    for n in range(inp.shape[0]):
        before[n] = h
        h = coef[n] * h + inp[n]
    return before, h


def _data(key: tuple, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs with a non-zero mean (so the state grows like a running sum) and a start state."""
    rng = rng_for(*key)
    inp = f32_exact(1.0 + 2.0 * rng.standard_normal((n, CH)))
    h0 = f32_exact(rng.uniform(-3.0, 3.0, CH))
    return inp, h0


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_constant_coefficient_matches_loop(alpha: float, n: int, dtype: torch.dtype) -> None:
    """Blocked Toeplitz scan == loop: ``before[n] = h_{n-1}``, ``last = h_{N-1}``."""
    inp, h0 = _data(("const", alpha, n), n)
    exp_before, exp_last = loop_scan(np.full_like(inp, alpha), inp, h0)
    before, last = linear_scan(alpha, torch.tensor(inp, dtype=dtype), torch.tensor(h0, dtype=dtype))
    assert before.dtype == dtype and last.dtype == dtype
    assert_rel(before, exp_before, RTOL[dtype], "before")
    assert_rel(last, exp_last, RTOL[dtype], "last")
    torch.testing.assert_close(before[0], torch.tensor(h0, dtype=dtype), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("low", [-1.0, 0.5, 0.9], ids=lambda v: f"coef_from_{v}")
def test_per_sample_coefficient_matches_loop(low: float, n: int, dtype: torch.dtype) -> None:
    """Hillis-Steele doubling == loop, with coefficients drawn in ``[low, 1)`` per sample."""
    inp, h0 = _data(("var", low, n), n)
    coef = f32_exact(rng_for("coef", low, n).uniform(low, 1.0, inp.shape))
    exp_before, exp_last = loop_scan(coef, inp, h0)
    before, last = linear_scan(
        torch.tensor(coef, dtype=dtype), torch.tensor(inp, dtype=dtype), torch.tensor(h0, dtype=dtype)
    )
    assert_rel(before, exp_before, RTOL[dtype], "before")
    assert_rel(last, exp_last, RTOL[dtype], "last")


@pytest.mark.parametrize("n", [1, 5, 100, 700])
def test_broadcast_coefficient_column(n: int) -> None:
    """A ``(N, 1)`` coefficient (as the warm-up uses) is broadcast over channels."""
    inp, h0 = _data(("col", n), n)
    t = np.arange(n, dtype=np.float64)[:, None]
    coef = np.minimum(0.99, (t + 1) / (t + 2))
    exp_before, exp_last = loop_scan(coef, inp, h0)
    before, last = linear_scan(torch.tensor(coef), torch.tensor(inp), torch.tensor(h0))
    assert_rel(before, exp_before, 1e-10, "before")
    assert_rel(last, exp_last, 1e-10, "last")


@pytest.mark.parametrize("n", [1, 7, 65, 300])
@pytest.mark.parametrize("constant", [True, False], ids=["constant", "per_sample"])
def test_reference_loop_matches_numpy(n: int, constant: bool) -> None:
    """``linear_scan_reference`` is the definition the fast paths are held to: check it too."""
    inp, h0 = _data(("ref", n, constant), n)
    coef = 0.9 if constant else rng_for("refcoef", n).uniform(-1.0, 1.0, inp.shape)
    exp_before, exp_last = loop_scan(np.broadcast_to(coef, inp.shape), inp, h0)
    tcoef = coef if constant else torch.tensor(coef)
    before, last = linear_scan_reference(tcoef, torch.tensor(inp), torch.tensor(h0))
    assert_rel(before, exp_before, 1e-12, "before")
    assert_rel(last, exp_last, 1e-12, "last")
    fast_before, fast_last = linear_scan(tcoef, torch.tensor(inp), torch.tensor(h0))
    assert_rel(fast_before, before, 1e-10, "fast vs reference before")
    assert_rel(fast_last, last, 1e-10, "fast vs reference last")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("n", [4096, 4161, 20000])
def test_small_alpha_long_batch_stays_finite(n: int, dtype: torch.dtype) -> None:
    """``alpha = 0.5`` over thousands of samples: ``0.5**-4096`` would overflow; the scan must not."""
    inp, h0 = _data(("finite", n), n)
    before, last = linear_scan(0.5, torch.tensor(inp, dtype=dtype), torch.tensor(h0, dtype=dtype))
    assert torch.isfinite(before).all() and torch.isfinite(last).all()
    exp_before, exp_last = loop_scan(np.full_like(inp, 0.5), inp, h0)
    assert_rel(before, exp_before, RTOL[dtype], "before")
    assert_rel(last, exp_last, RTOL[dtype], "last")
    # per-sample coefficients as small as 0.5 too
    coef = torch.full((n, CH), 0.5, dtype=dtype)
    vb, vl = linear_scan(coef, torch.tensor(inp, dtype=dtype), torch.tensor(h0, dtype=dtype))
    assert torch.isfinite(vb).all() and torch.isfinite(vl).all()
    assert_rel(vb, exp_before, RTOL[dtype], "per-sample before")


def test_alpha_one_is_a_running_sum() -> None:
    """``alpha = 1`` (no decay) is a plain cumulative sum: a closed form independent of any loop."""
    inp, h0 = _data(("sum",), 300)
    before, last = linear_scan(1.0, torch.tensor(inp), torch.tensor(h0))
    cums = h0 + np.cumsum(inp, axis=0)
    assert_rel(last, cums[-1], 1e-12, "last")
    assert_rel(before[1:], cums[:-1], 1e-12, "before")
