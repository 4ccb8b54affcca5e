"""The MLP's one-sample training step, forward and backward written out over NumPy views.

A batch of one makes every tensor a short vector, so the eager step's cost is dispatch:
about a hundred tensor operations through the autograd tape at a few microseconds each.
Here the same maths runs over NumPy views of the network's own parameters, ON buffers and
optimizer state (shared memory: nothing is copied, ``state_dict`` and snapshots see every
update), at under a microsecond per operation, and the update calls torch's fused
optimizer kernels directly (:mod:`model.fast.optim`).

The maths is :mod:`model.functional`'s, term for term: the batch-of-one statistics
(``_step_statistics``), ON's control-process backward, layer scaling's exact derivative,
activation clamping's masked gradient, LayerNorm, cross-entropy or squared error,
gradient clipping. Only rounding differs (BLAS kernels, summation order): in float64 the
two paths agree to ~1e-12, and ``tests/model/test_fast_step.py`` holds them together.

A step is computed first and applied after: :meth:`MLPStep.compute` writes nothing, so a
step refused for a non-finite loss or gradient leaves the learner byte for byte as it
was; :meth:`Pending.apply` then clips, advances ON state, leaves the health records and
updates the weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from model import functional as F
from model.fast.base import Array, Grads, Pending, StepBase, clamped_input, numpy_loss
from model.layers import ActivationClamp, LayerScaling, OnlineNorm

#: what a block's training forward leaves for backward: (input, norm cache, comp cache, output)
BlockTrace = tuple[Array, Any, Any, Array]


def _view(t: Tensor) -> Array:
    """A NumPy array sharing ``t``'s memory (CPU, contiguous)."""
    return t.detach().numpy()


def _lerp(start: Array, end: Array, weight: float) -> Array:
    """``torch.lerp`` with a scalar weight: its two formulas, for its rounding."""
    w = start.dtype.type(weight)
    if w < 0.5:
        return start + w * (end - start)
    return end - (end - start) * (1 - w)


def _rsqrt(t: Array) -> Array:
    return np.reciprocal(np.sqrt(t))


class _Norm:
    """An Online Normalization layer: views of its state and parameters, its constants,
    and its error compensation (layer scaling, clamping or none)."""

    def __init__(self, m: OnlineNorm, grads: Grads | None) -> None:
        self.module = m
        self.mu, self.var, self.u, self.v = (_view(b) for b in (m.mu, m.var, m.u, m.v))
        self.seen = _view(m.num_samples_tracked)  # 0-d int64, shared
        self.dt = self.mu.dtype.type
        self.weight = None if m.weight is None else _view(m.weight)
        self.bias = None if m.bias is None else _view(m.bias)
        # gradient arrays of weight and bias (none for the input standardizer: no backward)
        self.g_weight = None if grads is None or m.weight is None else grads.array(m.weight)
        self.g_bias = None if grads is None or m.bias is None else grads.array(m.bias)
        self.alpha_fwd, self.warmup = m.alpha_fwd, m.warmup
        self.eps = self.dt(m.eps)
        self.k = self.dt(1.0 - m.alpha_bkw)
        comp = m.compensation
        self.ls_eps = self.dt(comp.eps) if isinstance(comp, LayerScaling) else None
        self.clamp_val = self.dt(comp.clamp_val) if isinstance(comp, ActivationClamp) else None
        self._record: Tensor | None = None  # the health record tensor this step fills in place
        self._record_view: Array | None = None

    # ------------------------------------------------------------- normalizer
    def coefficient(self, seen: int) -> float:
        """The forward decay of a sample after ``seen`` samples (warm-up included)."""
        return float(
            F._forward_coefficient(self.alpha_fwd, 1, seen if self.warmup else None, self.module.mu.dtype)
        )

    def forward(self, h: Array, state: tuple[Array, Array, int] | None = None) -> tuple[Array, list]:
        """Training forward of one sample (``_step_statistics`` and the affine output) from
        ``state`` = ``(mu, var, seen)`` (the layer's own by default). Returns the output
        and the cache, which holds the new ``mu``/``var``: nothing is written here."""
        mu, var, seen = (self.mu, self.var, int(self.seen)) if state is None else state
        a = self.coefficient(seen)
        w = 1.0 - a
        c = h - mu
        msq = c * c
        inv_s = _rsqrt(var + self.eps)
        new_var = _lerp(var, msq * self.dt(a), w)
        new_mu = mu + self.dt(w) * c
        scale = inv_s if self.weight is None else inv_s * self.weight
        out = c * scale if self.bias is None else self.bias + c * scale
        return out, [c, msq, inv_s, scale, new_mu, new_var, None, None]

    def eval(self, h: Array) -> Array:
        """Frozen-state forward (``online_norm(training=False)``), any leading batch dims."""
        inv_s = _rsqrt(self.var + self.eps)
        scale = inv_s if self.weight is None else inv_s * self.weight
        c = h - self.mu
        return c * scale if self.bias is None else self.bias + c * scale

    def backward(
        self, dz: Array, cache: list, state: tuple[Array, Array] | None = None, accumulate: bool = False
    ) -> Array:
        """ON's control-process gradient (``OnlineNormFunction.backward``, batch of one)
        from ``state`` = ``(u, v)`` (the layer's own by default); the new ``u``/``v`` go
        into ``cache``. The weight and bias gradients are written, or with ``accumulate``
        added (a layer applied at every time step)."""
        k = self.k
        u, v = (self.u, self.v) if state is None else state
        c, msq, inv_s, scale = cache[0], cache[1], cache[2], cache[3]
        dzc = dz * c
        vs2 = (inv_s * inv_s) * v
        dz_scale = dz * scale
        du = (dz_scale - k * (vs2 * c)) - k * u
        cache[6] = u + du
        cache[7] = v + (dzc * scale - k * (msq * vs2))
        if self.g_weight is not None:
            if accumulate:
                self.g_weight += dzc * inv_s
                self.g_bias += dz
            else:
                np.multiply(dzc, inv_s, out=self.g_weight)
                self.g_bias[...] = dz
        return du

    def commit(self, cache: list, count: int = 1) -> None:
        """Write the state a cache holds (``u``/``v`` only if a backward filled them)."""
        self.mu[...] = cache[4]
        self.var[...] = cache[5]
        if cache[6] is not None:
            self.u[...] = cache[6]
            self.v[...] = cache[7]
        self.seen[...] += count

    # ------------------------------------------------------------ compensation
    def compensate(self, o: Array) -> tuple[Array, Any]:
        """Layer scaling or clamping of one sample, with what its backward needs."""
        if self.ls_eps is not None:
            mean_sq = self.dt(np.add.reduce(o * o, dtype=np.float64) / o.shape[0])
            r = 1 / np.sqrt(mean_sq + self.ls_eps)
            z = o * r
            return z, (z, r, mean_sq)
        if self.clamp_val is not None:
            return np.clip(o, -self.clamp_val, self.clamp_val), o
        return o, None

    def compensate_eval(self, o: Array) -> Array:
        """:meth:`compensate` of a batch ``(N, C)``."""
        if self.ls_eps is not None:
            mean_sq = np.einsum("ni,ni->n", o, o)[:, None] / self.dt(o.shape[-1])
            return o * (1 / np.sqrt(mean_sq + self.ls_eps))
        if self.clamp_val is not None:
            return np.clip(o, -self.clamp_val, self.clamp_val)
        return o

    def compensate_backward(self, dz: Array, cache: Any) -> Array:
        if self.ls_eps is not None:
            z, r, _ = cache
            # a projection that cancels: accumulated in float64, as torch's own mean is
            # more accurate than a float32 BLAS dot (it feeds Adam's near-zero gradients)
            proj = self.dt(np.add.reduce(dz * z, dtype=np.float64) / z.shape[0])
            return (dz - z * proj) * r
        if self.clamp_val is not None:
            return dz * ((cache >= -self.clamp_val) & (cache <= self.clamp_val))
        return dz

    def record_health(self, cache: Any) -> None:
        """The health signal a training forward leaves on the compensation module, into a
        tensor kept for the purpose (a fresh one after a state load cleared it)."""
        comp = self.module.compensation
        if isinstance(comp, LayerScaling):
            if self._record is None or comp.last_mean_sq is not self._record:
                self._record = torch.empty((1, 1), dtype=torch.float32)
                self._record_view = self._record.numpy()
                comp.last_mean_sq = self._record
            self._record_view[0, 0] = cache[2]
        elif isinstance(comp, ActivationClamp):
            if self._record is None or comp.last_input is not self._record:
                self._record = torch.empty((1, cache.shape[0]), dtype=torch.float32)
                self._record_view = self._record.numpy()
                comp.last_input = self._record
            self._record_view[0] = cache


class _LayerNorm:
    """``nn.LayerNorm`` over a vector, with its standard derivative."""

    def __init__(self, m: nn.LayerNorm, grads: Grads) -> None:
        self.module = m
        self.weight, self.bias = _view(m.weight), _view(m.bias)
        self.g_weight, self.g_bias = grads.array(m.weight), grads.array(m.bias)
        self.eps = self.weight.dtype.type(m.eps)

    def _normalize(self, h: Array) -> tuple[Array, Array]:
        c = h - h.mean(axis=-1, keepdims=True)
        rstd = _rsqrt((c * c).mean(axis=-1, keepdims=True) + self.eps)
        return c * rstd, rstd

    def forward(self, h: Array) -> tuple[Array, tuple[Array, Array]]:
        xhat, rstd = self._normalize(h)
        return xhat * self.weight + self.bias, (xhat, rstd)

    def eval(self, h: Array) -> Array:
        return self._normalize(h)[0] * self.weight + self.bias

    def backward(self, dy: Array, cache: tuple[Array, Array]) -> Array:
        xhat, rstd = cache
        np.multiply(dy, xhat, out=self.g_weight)
        self.g_bias[...] = dy
        dxhat = dy * self.weight
        # two projections that cancel: accumulated in float64
        n, dt = dy.shape[0], self.weight.dtype.type
        mean_d = dt(np.add.reduce(dxhat, dtype=np.float64) / n)
        mean_dx = dt(np.add.reduce(dxhat * xhat, dtype=np.float64) / n)
        return rstd * (dxhat - mean_d - xhat * mean_dx)


@dataclass
class _Block:
    """``Linear -> norm -> ReLU``: the linear layer's views, its gradients' and its normalizer."""

    weight: Array
    bias: Array | None
    g_weight: Array
    g_bias: Array | None
    norm: _Norm | _LayerNorm | None


def _outer(g: Array, x: Array, out: Array) -> None:
    """A linear layer's weight gradient for one sample."""
    np.multiply(g[:, None], x[None, :], out=out)


class MLPStep(StepBase):
    """The explicit one-sample step of :class:`model.networks.MLP` on CPU."""

    def _bind(self, network: nn.Module) -> None:
        inorm = network.input_norm
        self.input_norm = clamped_input(_Norm(inorm, None) if isinstance(inorm, OnlineNorm) else None, inorm)
        self.blocks = [self._block(b, self.grads) for b in network.blocks]
        head, skip = network.head, network.skip
        self.head_w, self.head_b = _view(head.weight), _view(head.bias)
        self.g_head_w, self.g_head_b = self.grads.array(head.weight), self.grads.array(head.bias)
        self.skip_w = None if skip is None else _view(skip.weight)
        self.g_skip_w = None if skip is None else self.grads.array(skip.weight)

    @staticmethod
    def _block(block: nn.Sequential, grads: Grads) -> _Block:
        linear, norm, act = block
        if not isinstance(act, nn.ReLU):
            raise ValueError(f"unsupported activation {type(act).__name__}")
        wrapped: _Norm | _LayerNorm | None
        if isinstance(norm, OnlineNorm):
            wrapped = _Norm(norm, grads)
        elif isinstance(norm, nn.LayerNorm):
            wrapped = _LayerNorm(norm, grads)
        elif isinstance(norm, nn.Identity):
            wrapped = None
        else:
            raise ValueError(f"unsupported normalizer {type(norm).__name__}")
        if linear.bias is None:
            return _Block(_view(linear.weight), None, grads.array(linear.weight), None, wrapped)
        return _Block(
            _view(linear.weight),
            _view(linear.bias),
            grads.array(linear.weight),
            grads.array(linear.bias),
            wrapped,
        )

    # ------------------------------------------------------------------ eval
    def predict(self, xs: Array) -> Array:
        """Eval-mode outputs ``(N, K)`` of inputs ``(N, *input_shape)``; changes nothing.

        One sample takes :meth:`_forward`'s operations, so the prediction of a sample
        equals, bit for bit, the output a training step on it returns.
        """
        with np.errstate(all="ignore"):  # as torch: overflow gives inf, not an error
            return self._predict(xs.reshape(xs.shape[0], -1))

    def _predict(self, xs: Array) -> Array:
        if xs.shape[0] == 1:
            return self._forward(xs[0], train=False)[0][None]
        h0 = xs if self.input_norm is None else self.input_norm.eval(xs)
        h = h0
        for blk in self.blocks:
            pre = h @ blk.weight.T
            if blk.bias is not None:
                pre = pre + blk.bias
            if blk.norm is not None:
                pre = blk.norm.eval(pre)
                if isinstance(blk.norm, _Norm):
                    pre = blk.norm.compensate_eval(pre)
            h = np.maximum(pre, 0)
        out = h @ self.head_w.T + self.head_b
        if self.skip_w is not None:
            out = out + h0 @ self.skip_w.T
        return out

    # ----------------------------------------------------------------- train
    def _forward(self, x: Array, train: bool) -> tuple[Array, Any, list[BlockTrace], Array, Array]:
        """Forward of one sample ``(F,)``: output, the input norm's cache, each block's
        trace, the last hidden state and the standardized input. With ``train`` the ON
        layers take their training path (statistics advance on commit); else frozen."""
        in_cache = None
        if self.input_norm is None:
            h0 = x
        elif train:
            h0, in_cache = self.input_norm.forward(x)
        else:
            h0 = self.input_norm.eval(x)
        h = h0
        traces: list[BlockTrace] = []
        for blk in self.blocks:
            pre = blk.weight @ h
            if blk.bias is not None:
                pre = pre + blk.bias
            norm = blk.norm
            n_cache = c_cache = None
            if norm is None:
                o = pre
            elif train:
                o, n_cache = norm.forward(pre)
            else:
                o = norm.eval(pre)
            if isinstance(norm, _Norm):
                o, c_cache = norm.compensate(o)
            out = np.maximum(o, 0)
            traces.append((h, n_cache, c_cache, out))
            h = out
        y = self.head_w @ h + self.head_b
        if self.skip_w is not None:
            y = y + self.skip_w @ h0
        return y, in_cache, traces, h, h0

    def compute(self, x: Array, y: int | Array) -> Pending:
        """Forward, loss and backward of one sample ``x`` (any shape, flattened); writes
        no state.
        Overflow is not an error here: the caller checks the loss and gradient norm."""
        with np.errstate(all="ignore"):
            return self._compute(x.reshape(-1), y)

    def _compute(self, x: Array, y: int | Array) -> Pending:
        out, in_cache, traces, last, h0 = self._forward(x, train=True)
        loss, g = numpy_loss(out, y, self.classify)
        _outer(g, last, self.g_head_w)
        self.g_head_b[...] = g
        if self.g_skip_w is not None:
            _outer(g, h0, self.g_skip_w)
        g = self.head_w.T @ g
        for i in range(len(self.blocks) - 1, -1, -1):
            blk = self.blocks[i]
            h_in, n_cache, c_cache, h_out = traces[i]
            g = g * (h_out > 0)
            norm = blk.norm
            if isinstance(norm, _Norm):
                g = norm.compensate_backward(g, c_cache)
            if norm is not None:
                g = norm.backward(g, n_cache)
            _outer(g, h_in, blk.g_weight)
            if blk.g_bias is not None:
                blk.g_bias[...] = g
            if i > 0:  # the first block's input needs no gradient
                g = blk.weight.T @ g
        grad_norm = self.grads.norm()
        return Pending(loss, grad_norm, out, lambda: self._apply(in_cache, traces, grad_norm))

    def _apply(self, in_cache: Any, traces: list[BlockTrace], grad_norm: float) -> None:
        """Clip, advance every ON layer, leave the health records, update the weights."""
        self._clip(grad_norm)
        if self.input_norm is not None:
            self.input_norm.commit(in_cache)
        for blk, (_, n_cache, c_cache, _) in zip(self.blocks, traces, strict=True):
            if isinstance(blk.norm, _Norm):
                blk.norm.commit(n_cache)
                blk.norm.record_health(c_cache)
        self.update.step(self.group_grads)
