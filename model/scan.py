"""Vectorized first-order linear recurrences ``h_n = a_n * h_{n-1} + b_n``.

Online Normalization's statistics and control processes are all of this form, so a
batch of N samples can be processed without a Python loop over the samples. Two
strategies, both free of ``alpha**-n`` (which overflows for small alpha and long
batches):

* constant coefficient: blocked lower-triangular Toeplitz products. The kernel
  ``alpha**(i - j)`` (``i >= j``) is built from ``exp((i - j) * log(alpha))``, which
  can only underflow to 0, never overflow.
* per-sample coefficient: Hillis-Steele doubling, ``ceil(log2 N)`` vectorized steps
  that only ever multiply coefficients that the sequential loop multiplies too.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

#: Block length of the blocked Toeplitz scan: cost is O(N * BLOCK * C).
BLOCK = 64


@functools.lru_cache(maxsize=128)
def _decay_kernel(alpha: float, n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Lower-triangular ``(n, n)`` matrix ``K[i, j] = alpha**(i - j)`` for ``j <= i``."""
    idx = torch.arange(n, dtype=torch.float64)
    lag = idx[:, None] - idx[None, :]
    log_alpha = math.log(alpha) if alpha > 0 else -math.inf
    kernel = torch.where(lag >= 0, torch.exp(lag.clamp(min=0) * log_alpha), 0.0)
    if alpha == 0:  # exp(0 * -inf) is nan; alpha**0 is 1
        kernel = torch.eye(n, dtype=torch.float64)
    return kernel.to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=128)
def _decay_powers(alpha: float, n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Column ``(n, 1)`` of ``alpha**(i + 1)``: how ``h_{-1}`` reaches ``h_i``."""
    idx = torch.arange(1, n + 1, dtype=torch.float64)
    powers = torch.tensor(alpha, dtype=torch.float64).pow(idx)
    return powers[:, None].to(dtype=dtype, device=device)


def _scan_constant(alpha: float, inp: Tensor, h0: Tensor) -> Tensor:
    """Inclusive scan with a constant coefficient; returns ``h_0 .. h_{N-1}``."""
    n, c = inp.shape
    dt, dev = inp.dtype, inp.device
    if n <= BLOCK:
        return torch.addmm(_decay_powers(alpha, n, dt, dev) * h0, _decay_kernel(alpha, n, dt, dev), inp)
    k = -(-n // BLOCK)
    padded = inp if n == k * BLOCK else torch.nn.functional.pad(inp, (0, 0, 0, k * BLOCK - n))
    blocks = padded.reshape(k, BLOCK, c)
    local = torch.matmul(_decay_kernel(alpha, BLOCK, dt, dev), blocks)  # scan inside each block
    # state at the end of each block: a scan over blocks with coefficient alpha**BLOCK
    block_alpha = alpha**BLOCK
    ends = _scan_constant(block_alpha, local[:, -1, :], h0)
    carry_in = torch.cat((h0[None], ends[:-1]), dim=0)  # state entering each block
    out = torch.addcmul(local, _decay_powers(alpha, BLOCK, dt, dev)[None], carry_in[:, None, :])
    return out.reshape(k * BLOCK, c)[:n]


def _scan_variable(coef: Tensor, inp: Tensor, h0: Tensor) -> Tensor:
    """Inclusive scan with per-sample coefficients (Hillis-Steele doubling)."""
    coef = coef.expand_as(inp)
    acc = torch.cat((torch.addcmul(inp[:1], coef[:1], h0[None]), inp[1:]), dim=0)
    n = inp.shape[0]
    step = 1
    while step < n:
        acc = torch.cat((acc[:step], torch.addcmul(acc[step:], coef[step:], acc[:-step])), dim=0)
        if step * 2 < n:
            coef = torch.cat((coef[:step], coef[step:] * coef[:-step]), dim=0)
        step *= 2
    return acc


def linear_scan(coef: float | Tensor, inp: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
    """Run ``h_n = coef_n * h_{n-1} + inp_n`` over ``n = 0 .. N-1`` from ``h_{-1} = h0``.

    Args:
        coef: a float (constant coefficient) or a tensor broadcastable to ``inp``.
        inp: ``(N, C)`` inputs, in stream order.
        h0: ``(C,)`` state before the first sample.

    Returns:
        ``(before, last)``: ``before[n] = h_{n-1}``, the state sample ``n`` sees, of
        shape ``(N, C)``, and ``last = h_{N-1}`` of shape ``(C,)``.
    """
    if inp.shape[0] == 1:
        last = coef * h0 + inp[0] if isinstance(coef, float) else torch.addcmul(inp[0], coef[0], h0)
        return h0[None], last
    out = _scan_constant(coef, inp, h0) if isinstance(coef, float) else _scan_variable(coef, inp, h0)
    return torch.cat((h0[None], out[:-1]), dim=0), out[-1]


def linear_scan_reference(coef: float | Tensor, inp: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
    """The same recurrence as a plain loop: the definition the fast paths must match."""
    states = []
    h = h0
    for n in range(inp.shape[0]):
        states.append(h)
        c = coef if isinstance(coef, float) else coef.expand_as(inp)[n]
        h = c * h + inp[n]
    return torch.stack(states), h
