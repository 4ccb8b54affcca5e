"""The RNN's one-sample step written out: backpropagation through time over NumPy views.

The eager step calls ON's autograd Function once per time step and layer, forward and
backward, and that is almost all of its time. This module runs the maths of
:class:`model.networks.RNN` directly, with the same order of state updates:

* the input standardizer advances once per sample, with statistics over the sample's
  time steps (an ``(N, F, T)`` Online Normalization);
* each layer's ON advances ``mu``/``var`` once per time step in the forward, and
  ``u``/``v`` once per time step in the backward, in reverse time order, the top layer
  first: the order autograd runs the eager step's nodes in;
* the prediction is the eval-mode forward before the step, as on the eager path.

Like :mod:`model.fast.mlp`, nothing is written until :meth:`Pending.apply`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from model.fast.base import Array, Grads, Pending, StepBase, clamped_input, numpy_loss
from model.fast.mlp import _lerp, _Norm, _outer, _rsqrt, _view
from model.layers import OnlineNorm


class _InputNorm:
    """The input standardizer of ``(T, F)`` samples: ON over ``(1, F, T)``, no affine."""

    def __init__(self, norm: _Norm) -> None:
        self.norm = norm

    def forward(self, x: Array) -> tuple[Array, list]:
        """``_step_statistics`` with a spatial dim: per feature, means over time."""
        n = self.norm
        a = n.coefficient(int(n.seen))
        w = 1.0 - a
        size = x.shape[0]
        c = x - n.mu  # (T, F)
        d = np.add.reduce(c, axis=0) * n.dt(1.0 / size)
        msq = np.add.reduce(c * c, axis=0) * n.dt(1.0 / size)
        q = msq - n.dt(w) * (d * d)
        inv_s = _rsqrt(n.var + n.eps)
        cache = [None, None, None, None, n.mu + n.dt(w) * d, _lerp(n.var, q, w), None, None]
        return c * inv_s, cache

    def eval(self, x: Array) -> Array:
        n = self.norm
        return (x - n.mu) * _rsqrt(n.var + n.eps)


@dataclass
class _Layer:
    """``h_t = tanh(norm(W x_t + U h_{t-1}))``: views, gradient arrays, normalizer."""

    w_in: Array
    b_in: Array | None
    w_rec: Array
    g_in: Array
    g_b_in: Array | None
    g_rec: Array
    norm: _Norm | None


class RNNStep(StepBase):
    """The explicit one-sample step of :class:`model.networks.RNN` on CPU."""

    def _bind(self, network: nn.Module) -> None:
        inorm = network.input_norm
        standardizer = _InputNorm(_Norm(inorm, None)) if isinstance(inorm, OnlineNorm) else None
        self.input_norm = clamped_input(standardizer, inorm)
        self.layers = [self._layer(m, self.grads) for m in network.layers]
        self.head_w, self.head_b = _view(network.head.weight), _view(network.head.bias)
        self.g_head_w = self.grads.array(network.head.weight)
        self.g_head_b = self.grads.array(network.head.bias)

    @staticmethod
    def _layer(m: nn.Module, grads: Grads) -> _Layer:
        norm = m.norm
        if isinstance(norm, OnlineNorm):
            wrapped: _Norm | None = _Norm(norm, grads)
        elif isinstance(norm, nn.Identity):
            wrapped = None
        else:
            raise ValueError(
                f"the fast rnn step covers online or no normalization, not {type(norm).__name__}"
            )
        bias = m.input_proj.bias
        return _Layer(
            _view(m.input_proj.weight),
            None if bias is None else _view(bias),
            _view(m.recurrent.weight),
            grads.array(m.input_proj.weight),
            None if bias is None else grads.array(bias),
            grads.array(m.recurrent.weight),
            wrapped,
        )

    # ------------------------------------------------------------------ eval
    def predict(self, xs: Array) -> Array:
        """Eval-mode outputs ``(N, K)`` of inputs ``(N, T, F)``, sample by sample."""
        with np.errstate(all="ignore"):
            return np.stack([self._forward(x, train=False)[0] for x in xs])

    # ----------------------------------------------------------------- train
    def _forward(self, x: Array, train: bool) -> tuple[Array, Any]:
        in_cache = None
        if self.input_norm is None:
            h = x
        elif train:
            h, in_cache = self.input_norm.forward(x)
        else:
            h = self.input_norm.eval(x)
        traces = []
        for layer in self.layers:
            h, trace = self._layer_forward(layer, h, train)
            traces.append(trace)
        return self.head_w @ h[-1] + self.head_b, (in_cache, traces, h[-1])

    def _layer_forward(self, layer: _Layer, xs: Array, train: bool) -> tuple[Array, Any]:
        proj = xs @ layer.w_in.T
        if layer.b_in is not None:
            proj = proj + layer.b_in
        norm = layer.norm
        h = np.zeros(layer.w_rec.shape[0], dtype=xs.dtype)
        outs, steps = [], []
        state = None if norm is None else (norm.mu, norm.var, int(norm.seen))
        for t in range(xs.shape[0]):
            a = proj[t] + layer.w_rec @ h
            cache = c_cache = None
            if norm is None:
                z = a
            else:
                if train:
                    o, cache = norm.forward(a, state)
                    state = (cache[4], cache[5], state[2] + 1)
                else:
                    o = norm.eval(a)
                z, c_cache = norm.compensate(o)
            h = np.tanh(z)
            outs.append(h)
            steps.append((cache, c_cache))
        return np.stack(outs), (xs, steps, outs)

    def compute(self, x: Array, y: int | Array) -> Pending:
        """Eval prediction, then forward, loss and backward of one sample ``(T, F)``."""
        with np.errstate(all="ignore"):
            prediction = self._forward(x, train=False)[0]
            out, (in_cache, traces, last) = self._forward(x, train=True)
            loss, g = numpy_loss(out, y, self.classify)
            _outer(g, last, self.g_head_w)
            self.g_head_b[...] = g
            g_seq = np.zeros((x.shape[0], last.shape[0]), dtype=out.dtype)
            g_seq[-1] = self.head_w.T @ g
            finals = []
            for i in range(len(self.layers) - 1, -1, -1):
                g_seq, final = self._layer_backward(self.layers[i], traces[i], g_seq, need_input=i > 0)
                finals.append(final)
            grad_norm = self.grads.norm()
        finals.reverse()
        return Pending(loss, grad_norm, prediction, lambda: self._apply(in_cache, traces, finals, grad_norm))

    def _layer_backward(self, layer: _Layer, trace: Any, g_out: Array, need_input: bool) -> tuple[Any, Any]:
        """BPTT through one layer; ``g_out`` ``(T, H)`` is the loss gradient of its outputs."""
        xs, steps, outs = trace
        norm = layer.norm
        if norm is not None and norm.g_weight is not None:
            norm.g_weight[...] = 0
            norm.g_bias[...] = 0
        g_pre = np.empty_like(g_out)
        g_next = np.zeros_like(g_out[0])  # from h_{t+1} through the recurrent weights
        state = None if norm is None else (norm.u, norm.v)
        layer.g_rec[...] = 0
        for t in range(len(steps) - 1, -1, -1):
            cache, c_cache = steps[t]
            h = outs[t]
            g = (g_out[t] + g_next) * (1 - h * h)
            if norm is not None:
                g = norm.compensate_backward(g, c_cache)
                g = norm.backward(g, cache, state, accumulate=True)
                state = (cache[6], cache[7])
            g_pre[t] = g
            if t > 0:
                layer.g_rec += np.multiply(g[:, None], outs[t - 1][None, :])
            g_next = layer.w_rec.T @ g
        np.matmul(g_pre.T, xs, out=layer.g_in)
        if layer.g_b_in is not None:
            layer.g_b_in[...] = np.add.reduce(g_pre, axis=0)
        g_in = g_pre @ layer.w_in if need_input else None
        return g_in, state

    def _apply(self, in_cache: Any, traces: list, finals: list, grad_norm: float) -> None:
        self._clip(grad_norm)
        if self.input_norm is not None:
            self.input_norm.norm.commit(in_cache)
        for layer, (_, steps, _), final in zip(self.layers, traces, finals, strict=True):
            norm = layer.norm
            if norm is None:
                continue
            last_cache, last_comp = steps[-1]
            norm.commit([None] * 4 + [last_cache[4], last_cache[5], final[0], final[1]], count=len(steps))
            norm.record_health(last_comp)
        self.update.step(self.group_grads)
