"""The stateful rnn's window backward written out in NumPy: the eager window's maths.

The eager window (:meth:`model.stream.StatefulRNN.window`) runs two custom autograd
Functions and a handful of tensor operations per layer and time step, forward and
backward: at a batch of one that is dispatch, about a millisecond per window step.
Here the same maths runs over NumPy views of the network's parameters, term for term:
the stored statistics of each step, ON's control-process backward for the newest step
(increments summed into the same :class:`~model.stream.Control`, whose rule it follows),
layer scaling's exact
derivative, clamping's mask, ``tanh``, the head and the loss. Only rounding differs;
``tests/model/test_stream_fast.py`` holds the two together.

Covered: norm ``online`` (any ECM, one layer-scaling group) and ``none`` on CPU; the
learner takes the eager window elsewhere. The arrival step is shared by both paths, so
stream states are the same whichever computes the gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from model.fast.base import numpy_loss
from model.layers import ActivationClamp, LayerScaling, OnlineNorm
from model.spec import ModelSpec
from model.stream import Control, StatefulRNN
from model.stream_state import StreamState

Array = np.ndarray


def unsupported_reason(spec: ModelSpec, device: torch.device) -> str | None:
    """Why the NumPy window does not cover ``spec`` on ``device`` (``None``: it does)."""
    if device.type != "cpu":
        return f"the numpy window runs on cpu, not {device.type}"
    if spec.norm.kind == "layer":
        return "the numpy window covers online or no normalization, not layer"
    if spec.norm.kind == "online" and spec.norm.ecm == "ls" and spec.norm.ls_group_size is not None:
        return "the numpy window covers layer scaling over all features, not groups"
    return None


def _grad(p: nn.Parameter) -> Tensor:
    return torch.zeros_like(p, memory_format=torch.contiguous_format)


@dataclass
class _Layer:
    """Views of one recurrent layer's parameters; ``grads``: role -> (parameter, gradient)."""

    w_in: Array
    b_in: Array | None
    w_rec: Array
    norm_w: Array | None
    norm_b: Array | None
    eps: float
    ls_eps: float | None
    clamp: float | None
    grads: dict[str, tuple[nn.Parameter, Tensor]]


class NumpyWindow:
    """Loss and gradients of a stream's window, with NumPy; writes ``p.grad``."""

    def __init__(self, network: StatefulRNN, classify: bool) -> None:
        self.network = network
        self.classify = classify
        self.layers = [self._bind(layer) for layer in network.layers]
        self.head_w = network.head.weight.detach().numpy()
        self.head_b = network.head.bias.detach().numpy()
        self.head_grads = [
            (network.head.weight, _grad(network.head.weight)),
            (network.head.bias, _grad(network.head.bias)),
        ]
        self.sizes = network.layout.hidden

    @staticmethod
    def _bind(layer: nn.Module) -> _Layer:
        norm = layer.norm
        bias = layer.input_proj.bias
        online = isinstance(norm, OnlineNorm)
        comp = norm.compensation if online else None
        roles = {"w_in": layer.input_proj.weight, "b_in": bias, "w_rec": layer.recurrent.weight}
        if online:
            roles |= {"norm_w": norm.weight, "norm_b": norm.bias}
        grads = {name: (p, _grad(p)) for name, p in roles.items() if p is not None}
        return _Layer(
            layer.input_proj.weight.detach().numpy(),
            None if bias is None else bias.detach().numpy(),
            layer.recurrent.weight.detach().numpy(),
            norm.weight.detach().numpy() if online else None,
            norm.bias.detach().numpy() if online else None,
            float(norm.eps) if online else 0.0,
            float(comp.eps) if isinstance(comp, LayerScaling) else None,
            float(comp.clamp_val) if isinstance(comp, ActivationClamp) else None,
            grads,
        )

    def loss_and_grads(
        self, state: StreamState, y: int | Array, controls: list[Control]
    ) -> tuple[float, Array]:
        """The window's loss and last output; every trainable parameter's ``.grad`` set."""
        with np.errstate(all="ignore"):
            return self._run(state, y, controls)

    def _run(self, state: StreamState, y: int | Array, controls: list[Control]) -> tuple[float, Array]:
        steps = state.steps
        n = len(steps)
        split = np.cumsum(self.sizes)[:-1]
        h_prev = np.split(state.h0.numpy(), split)
        inputs = np.stack([s.inputs.numpy() for s in steps])  # (n, F)
        online = steps[0].mu is not None
        mus = np.split(np.stack([s.mu.numpy() for s in steps]), split, axis=1) if online else None  # type: ignore[union-attr]
        vars_ = np.split(np.stack([s.var.numpy() for s in steps]), split, axis=1) if online else None  # type: ignore[union-attr]
        traces = []
        xs = inputs
        for i, layer in enumerate(self.layers):
            trace = self._forward(
                layer, xs, h_prev[i], None if mus is None else mus[i], None if vars_ is None else vars_[i]
            )
            traces.append(trace)
            xs = trace["h"]
        top = xs[-1]
        out = self.head_w @ top + self.head_b
        loss, g = numpy_loss(out, y, self.classify)
        (pw, gw), (pb, gb) = self.head_grads
        gw.numpy()[...] = np.multiply.outer(g, top)
        gb.numpy()[...] = g
        pw.grad, pb.grad = gw, gb
        g_seq = np.zeros_like(xs)
        g_seq[-1] = self.head_w.T @ g
        for i in range(len(self.layers) - 1, -1, -1):
            ctrl = controls[i] if controls else None
            g_seq = self._backward(self.layers[i], traces[i], g_seq, ctrl, need_input=i > 0)
            if ctrl is not None:
                ctrl.count += n if not ctrl.newest_only else 1
        return loss, out

    @staticmethod
    def _forward(layer: _Layer, xs: Array, h0: Array, mu: Array | None, var: Array | None) -> dict:
        n = xs.shape[0]
        proj = xs @ layer.w_in.T
        if layer.b_in is not None:
            proj = proj + layer.b_in
        hs = np.empty((n, layer.w_rec.shape[0]), dtype=xs.dtype)
        hin = np.empty_like(hs)  # the hidden state each step starts from
        trace: dict = {"x": xs, "h": hs, "hin": hin, "c": [], "inv_s": [], "z": [], "r": [], "o": []}
        dt = xs.dtype.type
        one, inv_h = dt(1.0), dt(1.0 / hs.shape[1])
        eps = dt(layer.eps)
        ls_eps = dt(layer.ls_eps or 0.0)
        h = h0
        for t in range(n):
            hin[t] = h
            a = proj[t] + layer.w_rec @ h
            if mu is not None and var is not None:
                c = a - mu[t]
                inv_s = np.reciprocal(np.sqrt(var[t] + eps))
                o = c * (inv_s * layer.norm_w) + layer.norm_b
                trace["c"].append(c)
                trace["inv_s"].append(inv_s)
                trace["o"].append(o)
                if layer.ls_eps is not None:
                    r = one / np.sqrt(np.dot(o, o) * inv_h + ls_eps)
                    z = o * r
                    trace["r"].append(r)
                elif layer.clamp is not None:
                    z = np.clip(o, -layer.clamp, layer.clamp)
                else:
                    z = o
                trace["z"].append(z)
            else:
                z = a
            h = np.tanh(z)
            hs[t] = h
        return trace

    @staticmethod
    def _backward(layer: _Layer, trace: dict, g_out: Array, ctrl: Control | None, need_input: bool) -> Array:
        """BPTT through one layer; ``g_out`` ``(n, H)`` is the loss gradient of its outputs."""
        xs, hs, hin = trace["x"], trace["h"], trace["hin"]
        n = xs.shape[0]
        g_pre = np.empty_like(g_out)
        g_next = np.zeros_like(g_out[0])
        online = ctrl is not None
        if online:
            assert ctrl is not None
            u, v, k = ctrl.u.numpy(), ctrl.v.numpy(), xs.dtype.type(ctrl.k)
            du, dv = ctrl.du.numpy(), ctrl.dv.numpy()
            g_nw = np.zeros_like(layer.norm_w)
            g_nb = np.zeros_like(layer.norm_b)
        inv_h = xs.dtype.type(1.0 / hs.shape[1])
        for t in range(n - 1, -1, -1):
            h = hs[t]
            g = (g_out[t] + g_next) * (1 - h * h)
            if online:
                if layer.ls_eps is not None:
                    z, r = trace["z"][t], trace["r"][t]
                    g = r * (g - z * (np.dot(g, z) * inv_h))
                elif layer.clamp is not None:
                    o = trace["o"][t]
                    g = g * (np.abs(o) <= layer.clamp)
                c, inv_s = trace["c"][t], trace["inv_s"][t]
                y = c * inv_s
                g_nw += g * y
                g_nb += g
                kk = k if t == n - 1 or ctrl.corrects_all else k * 0  # type: ignore[union-attr]
                e = g * (inv_s * layer.norm_w) - kk * (v * inv_s) * y
                dx = e - kk * u
                if t == n - 1 or not ctrl.newest_only:  # type: ignore[union-attr]
                    dv += c * e
                    du += dx
                g = dx
            g_pre[t] = g
            g_next = layer.w_rec.T @ g
        computed = {"w_in": g_pre.T @ xs, "b_in": g_pre.sum(0), "w_rec": g_pre.T @ hin}
        if online:
            computed |= {"norm_w": g_nw, "norm_b": g_nb}
        for name, (p, grad) in layer.grads.items():
            grad.numpy()[...] = computed[name]
            p.grad = grad
        return g_pre @ layer.w_in if need_input else g_pre
