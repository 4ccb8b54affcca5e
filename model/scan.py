"""Vectorized first-order linear recurrences ``h_n = a_n * h_{n-1} + b_n``.

Online Normalization's statistics and control processes are all of this form, so a
batch of N samples can be processed without a Python loop over the samples.

Every path computes the ``N + 1`` states ``h_{-1} .. h_{N-1}`` in one tensor, so the
state each sample sees (``h_{n-1}``) and the final state are views of it, with no
concatenation. None divides by a product of coefficients (``alpha**-n`` overflows for
small alpha and long batches; per-sample coefficients can be 0 or negative), so each
only multiplies coefficients that the sequential loop multiplies too:

* constant coefficient: lower-triangular Toeplitz products with kernels precomputed
  once per length (:class:`_ConstantPlan`), blocked beyond :data:`_DIRECT` samples.
  The kernel ``alpha**(i - j)`` (``i >= j``) only holds non-negative powers, which can
  underflow to 0 but never overflow.
* per-sample coefficient: the loop itself up to :data:`_SEQUENTIAL` samples (one
  operation a sample), else Hillis-Steele doubling, ``ceil(log2 N)`` vectorized steps,
  preceded on long, wide inputs by odd-even reduction, which keeps the work ``O(N C)``.

At ON's sizes the cost is mostly the number of tensor operations (a few microseconds of
dispatch each on CPU) and of passes over ``(N, C)`` memory, so both keep these small.
(Cumulative sums and products would need fewer operations, but divide, and their CPU
kernels are sequential: slower than these at ``C >= 64``.)
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

#: Longest block of the blocked Toeplitz scan: cost is O(N * block * C) multiply-adds.
BLOCK = 64
#: Up to this length one (N + 1, N) kernel product beats blocking (fewer operations).
_DIRECT = 32
#: Above this many elements per step, halve the sequence (odd-even) before doubling.
_DOUBLING_ELEMENTS = 1 << 15
#: Up to this length a per-sample coefficient is scanned step by step (one op a step).
_SEQUENTIAL = 8


def _kernel(alpha: float, gain: float, rows: int, cols: int) -> Tensor:
    """``(rows, cols)`` float64 kernel ``K[i, j] = gain * alpha**(i - 1 - j)`` for ``j < i``, else 0.

    Row ``i`` of ``K @ b`` is the state before position ``i`` of a scan from 0 (row
    ``cols`` the state after the last). Only non-negative powers: they may underflow to
    0, never overflow.
    """
    i = torch.arange(rows, dtype=torch.float64)[:, None]
    lag = i - 1 - torch.arange(cols, dtype=torch.float64)[None, :]
    powers = torch.tensor(alpha, dtype=torch.float64).pow(lag.clamp(min=0))  # 0**0 is 1
    return torch.where(lag >= 0, powers * gain, 0.0)


def _powers(alpha: float, n: int) -> Tensor:
    """Column ``(n, 1)`` of ``alpha**i`` in float64: how an entering state reaches position ``i``."""
    return torch.tensor(alpha, dtype=torch.float64).pow(torch.arange(n, dtype=torch.float64))[:, None]


def _block_length(n: int) -> int:
    """A power of two near ``sqrt(n)`` (at most :data:`BLOCK`): two levels cover ``BLOCK**2``."""
    return min(BLOCK, max(8, 1 << math.ceil(math.log2(n) / 2)))


class _ConstantPlan:
    """Precomputed kernels of a constant-coefficient scan of one length, dtype and device.

    Built once per ``(alpha, gain, n)`` (see :func:`_constant_plan`), so a call is only
    its few products: at ON's sizes the cost is the number of tensor operations.

    * ``n <= _DIRECT``: ``states = P h0 + K inp``, one ``(n + 1, n)`` product.
    * else blocks of ``B`` samples: per block from a zero state (``(B + 1, B)`` kernel,
      one ``bmm`` whose last row is the state after the block), the states entering
      the blocks by a scan over the ``k`` block ends with coefficient ``alpha**B``
      (a nested plan), then one ``addcmul`` adds each entering state's decay.
    """

    def __init__(self, alpha: float, gain: float, n: int, dtype: torch.dtype, device: torch.device) -> None:
        self.n = n
        self.direct = n <= _DIRECT
        if self.direct:
            self.kernel = _kernel(alpha, gain, n + 1, n).to(dtype=dtype, device=device)
            self.entry = _powers(alpha, n + 1).to(dtype=dtype, device=device)
            return
        block = _block_length(n)
        self.block, self.blocks = block, -(-n // block)
        kernel = _kernel(alpha, gain, block + 1, block).to(dtype=dtype, device=device)
        self.kernel = kernel.expand(self.blocks, block + 1, block)  # a view: one bmm
        self.entry = _powers(alpha, block).to(dtype=dtype, device=device)
        self.outer = _constant_plan(alpha**block, 1.0, self.blocks, dtype, device)

    def __call__(self, inp: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
        """``(before, last)`` of the scan of ``inp`` ``(n, C)`` from ``h0`` ``(C,)``."""
        if self.direct:
            states = torch.addmm(self.entry * h0, self.kernel, inp)
            return states[:-1], states[-1]
        n, c = inp.shape
        k, block = self.blocks, self.block
        if k * block == n:
            blocks = inp.view(k, block, c) if inp.is_contiguous() else inp.reshape(k, block, c)
        else:  # zero-padded: the state after sample n-1 is the one before padded position n
            blocks = inp.new_zeros(k, block, c)
            blocks.view(k * block, c)[:n] = inp
        local = torch.bmm(self.kernel, blocks)  # (k, B + 1, C): before each position, after the block
        entering, after = self.outer(local[:, block], h0)
        states = torch.addcmul(local[:, :block], self.entry, entering[:, None]).view(k * block, c)
        return (states, after) if k * block == n else (states[:n], states[n])


@functools.lru_cache(maxsize=256)
def _constant_plan(
    alpha: float, gain: float, n: int, dtype: torch.dtype, device: torch.device
) -> _ConstantPlan:
    """The plan of one scan shape, built on first use (kernels are float64-exact, then rounded)."""
    return _ConstantPlan(alpha, gain, n, dtype, device)


def _sequential(coef: Tensor, inp: Tensor, h0: Tensor) -> Tensor:
    """``h0, h_0, ..., h_{N-1}`` by the loop itself: one ``addcmul`` per sample into rows of
    one buffer. Fewest operations for short batches, and exactly the definition."""
    states = inp.new_empty(inp.shape[0] + 1, inp.shape[1])
    rows = states.unbind(0)
    rows[0].copy_(h0)
    for row, prev, c, b in zip(rows[1:], rows[:-1], coef.unbind(0), inp.unbind(0), strict=True):
        torch.addcmul(b, c, prev, out=row)
    return states


def _doubling(coef: Tensor, seq: Tensor, first: Tensor | None = None) -> Tensor:
    """Inclusive scan ``h_i = coef_i h_{i-1} + seq_i`` by Hillis-Steele doubling.

    From ``h_{-1} = first`` (returning ``first, h_0, ..., h_{m-1}``), else from 0
    (returning ``h_0, ..., h_{m-1}``). ``ceil(log2 m)`` steps over the whole ``(m, C)``
    sequence: ``first`` is folded into element 0 rather than prepended, which would
    cost a step whenever ``m`` is a power of two. The sequence sits behind ``pad`` zero
    rows in two ping-pong buffers: at step ``s`` element ``i`` reads element ``i - s``,
    which for ``i < s`` is a zero row, so every step is one ``addcmul`` and one ``mul``
    over whole buffers instead of a slice-compute-concatenate.
    """
    m = seq.shape[0]
    pad = 1 << max(0, math.ceil(math.log2(m)) - 1)  # the largest step (and room for `first`)
    acc_bufs = seq.new_zeros(2, pad + m, seq.shape[1]).unbind(0)
    mul_bufs = seq.new_zeros(2, pad + m, coef.shape[1]).unbind(0)
    if first is None:
        acc_bufs[0][pad:] = seq
    else:
        torch.addcmul(seq[0], coef[0], first, out=acc_bufs[0][pad])
        acc_bufs[0][pad + 1 :] = seq[1:]
    mul_bufs[0][pad:] = coef
    acc, acc_next = (b[pad:] for b in acc_bufs)  # the live rows of each buffer
    mul, mul_next = (b[pad:] for b in mul_bufs)
    src = msrc = 0  # which buffer holds the current values
    step = 1
    while step < m:
        torch.addcmul(acc, mul, acc_bufs[src][pad - step : pad - step + m], out=acc_next)
        acc, acc_next, src = acc_next, acc, 1 - src
        if step * 2 < m:
            torch.mul(mul, mul_bufs[msrc][pad - step : pad - step + m], out=mul_next)
            mul, mul_next, msrc = mul_next, mul, 1 - msrc
        step *= 2
    if first is None:
        return acc
    acc_bufs[src][pad - 1] = first  # the state before element 0, in the zero row before it
    return acc_bufs[src][pad - 1 :]


def _reduce_in_place(coef: Tensor, seq: Tensor) -> None:
    """Inclusive scan ``h_i = coef_i h_{i-1} + seq_i`` (``h_{-1} = 0``), written into ``seq``.

    Doubling costs ``m log2 m`` work, which dominates for long, wide sequences. There,
    odd-even reduction first: fold each even element into the odd one after it
    (``coef`` products and inputs, in place), scan the half-length odd subsequence,
    then finish the even elements from their odd predecessors: ``O(m)`` work and
    ``log2`` levels. ``coef`` is overwritten too.
    """
    m = seq.shape[0]
    if m * seq.shape[1] <= _DOUBLING_ELEMENTS or m <= 16:
        seq.copy_(_doubling(coef, seq))
        return
    odd, even = seq[1::2], seq[0::2]
    odd_coef, even_coef = coef[1::2], coef[0::2]
    half = odd.shape[0]
    odd.addcmul_(odd_coef, even[:half])  # h_{2j+1} in terms of h_{2j-1}
    odd_coef.mul_(even_coef[:half])
    _reduce_in_place(odd_coef, odd)
    even[1:].addcmul_(even_coef[1:], odd[: even.shape[0] - 1])  # h_{2j} from h_{2j-1}


def _scan_variable(coef: Tensor, inp: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
    """``(before, last)`` of a per-sample-coefficient scan (see :func:`linear_scan`).

    Each path returns the ``N + 1`` states ``h0, h_0, ..., h_{N-1}``; for odd-even
    reduction ``h0`` is prepended as an element with coefficient 0.
    """
    n, c = inp.shape
    if coef.dtype != inp.dtype:
        coef = coef.to(inp.dtype)
    if coef.dim() != 2 or coef.shape[0] != n:
        coef = coef.expand(n, coef.shape[-1] if coef.dim() == 2 else c)
    if n <= _SEQUENTIAL:
        states = _sequential(coef, inp, h0)
    elif n * c <= _DOUBLING_ELEMENTS:
        states = _doubling(coef, inp, first=h0)
    else:
        states = torch.cat((h0[None], inp))
        _reduce_in_place(torch.cat((coef.new_zeros(1, coef.shape[1]), coef)), states)
    return states[:-1], states[-1]


def linear_scan(coef: float | Tensor, inp: Tensor, h0: Tensor, gain: float = 1.0) -> tuple[Tensor, Tensor]:
    """Run ``h_n = coef_n * h_{n-1} + gain * inp_n`` over ``n = 0 .. N-1`` from ``h_{-1} = h0``.

    Args:
        coef: a float (constant coefficient) or a tensor broadcastable to ``inp``.
        inp: ``(N, C)`` inputs, in stream order.
        h0: ``(C,)`` state before the first sample.
        gain: a constant factor of the inputs; folded into the kernels of a constant
            coefficient, so it costs no pass over ``inp`` there.

    Returns:
        ``(before, last)``: ``before[n] = h_{n-1}``, the state sample ``n`` sees, of
        shape ``(N, C)``, and ``last = h_{N-1}`` of shape ``(C,)``. For ``N > 1`` both
        are fresh (``before`` may be modified in place); for ``N == 1`` ``before`` is a
        view of ``h0``.
    """
    if inp.shape[0] == 1:
        first = inp[0] if gain == 1.0 else inp[0] * gain
        if isinstance(coef, float):
            return h0[None], torch.add(first, h0, alpha=coef)
        return h0[None], torch.addcmul(first, coef.reshape(-1), h0)
    if isinstance(coef, float):
        return _constant_plan(coef, float(gain), inp.shape[0], inp.dtype, inp.device)(inp, h0)
    if gain != 1.0:
        inp = inp * gain
    return _scan_variable(coef, inp, h0)


def linear_scan_reference(
    coef: float | Tensor, inp: Tensor, h0: Tensor, gain: float = 1.0
) -> tuple[Tensor, Tensor]:
    """The same recurrence as a plain loop: the definition the fast paths must match."""
    states = []
    h = h0
    for n in range(inp.shape[0]):
        states.append(h)
        c = coef if isinstance(coef, float) else coef.expand_as(inp)[n]
        h = c * h + gain * inp[n]
    return torch.stack(states), h
