"""Shared helpers of the ON tests: seeded inputs, layouts, relative-error asserts."""

from __future__ import annotations

import zlib

import numpy as np
import torch

from model import OnlineNorm, OnlineNorm1d, OnlineNorm2d

#: Channels of every layer under test: small, so that the sequential oracle is fast.
C = 3
#: Per-channel input mean and scale: non-zero and non-unit, so the statistics matter.
CH_MEAN = np.array([1.5, -2.0, 3.0])
CH_SCALE = np.array([0.5, 2.0, 3.0])

#: layout name -> (module class, spatial shape S)
LAYOUTS: dict[str, tuple[type[OnlineNorm], tuple[int, ...]]] = {
    "1d_NC": (OnlineNorm1d, ()),
    "1d_NCL": (OnlineNorm1d, (5,)),
    "2d_NCHW": (OnlineNorm2d, (3, 3)),
}

#: Relative tolerance per computation dtype (the brief's contract).
RTOL = {torch.float64: 1e-10, torch.float32: 1e-4}


def rng_for(*key: object) -> np.random.Generator:
    """A generator seeded from the test's parameters: every test is reproducible."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def f32_exact(a: np.ndarray) -> np.ndarray:
    """Round to float32 and back: float32 and float64 runs then see identical inputs."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def make_input(rng: np.random.Generator, n: int, spatial: tuple[int, ...]) -> np.ndarray:
    """``(n, C, *spatial)`` samples with per-channel mean ``CH_MEAN`` and scale ``CH_SCALE``."""
    shape = (1, C) + (1,) * len(spatial)
    z = rng.standard_normal((n, C, *spatial))
    return f32_exact(CH_MEAN.reshape(shape) + CH_SCALE.reshape(shape) * z)


def make_grad(rng: np.random.Generator, n: int, spatial: tuple[int, ...]) -> np.ndarray:
    """Incoming gradient with a non-zero mean, so the ``u`` control process has work."""
    return f32_exact(0.3 + rng.standard_normal((n, C, *spatial)))


def assert_rel(actual: torch.Tensor, expected: np.ndarray | torch.Tensor, rtol: float, what: str) -> None:
    """Elementwise ``|a - e| <= rtol * (|e| + max|e|)``: relative, and robust near zero."""
    exp = torch.as_tensor(np.asarray(expected) if isinstance(expected, np.ndarray) else expected)
    exp = exp.to(torch.float64)
    act = actual.detach().to(torch.float64)
    assert act.shape == exp.shape, f"{what}: shape {tuple(act.shape)} != {tuple(exp.shape)}"
    assert torch.isfinite(exp).all(), f"{what}: expected value is not finite"
    scale = float(exp.abs().max()) if exp.numel() else 0.0
    torch.testing.assert_close(
        act, exp, rtol=rtol, atol=rtol * max(scale, 1e-300), msg=lambda m: f"{what}: {m}"
    )
