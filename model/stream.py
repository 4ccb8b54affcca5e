"""The stateful rnn: one time step per call, a hidden state per stream, truncated BPTT.

``StatefulRNN`` is :class:`model.networks.RNN` cut at the time step: an input
standardizer per feature, stacked ``h_t = tanh(norm(W x_t + U h_{t-1}))`` layers
(:class:`~model.networks.NormalizedRNNLayer`'s parameters), a head on the top hidden
state. A stream's state (:mod:`model.stream_state`) lives outside the network; the
network's parameters and normalizer statistics are the model's, shared by every stream.

A step of stream ``s`` with input ``x_t`` (prequential):

1. **Arrival**: ``x_t`` is standardized and the hidden states advance from the
   stream's ``h_{t-1}`` (no tape); the prediction is the head on ``h_t``.
2. **Learning** (only with ``y_t``): the window of the stream's last ``K = bptt``
   steps is recomputed with autograd from the stored ``h_{t-K}``, with the current
   weights, and one optimizer step follows on the loss of its last output.

Online Normalization under truncated BPTT across interleaved streams (issue 10 item 6):

* **Forward statistics** (``mu``, ``var`` and the warm-up count of every ON layer, the
  input standardizer's too) advance exactly once per arriving time step, at arrival, in
  arrival order across all streams: they are the model's, not a stream's. Each step is
  normalized with the statistics *before* it, as in the paper, and the stream state
  keeps those statistics; the recomputed window normalizes each of its steps with the
  statistics that step had on arrival and advances nothing. So a window with unchanged
  weights reproduces the arrival's hidden states bit for bit, and its gradient is the
  gradient of the function that made the predictions.
* **Backward control processes** (``u``, ``v``) advance once per optimizer step, i.e.
  once per labelled time step, in arrival order, and only the step that just arrived
  (the window's newest) goes through ON's control-process backward:
  ``g = dy - (1-alpha_bkw) v y``, ``dx = g / s - (1-alpha_bkw) u``, then
  ``v += g * y``, ``u += dx``, with ``u``, ``v`` as they were before the step. The
  window's older steps were normalized with statistics that are stored constants, so
  their backward is the exact derivative of the recomputed function (the affine map
  ``(a - mu) / s * w + b``): ON's correction stands in for the gradient through the
  statistics, which each time step gets once, when it arrives, however many windows
  recompute it afterwards. With ``K = 1`` this is the paper's sequential rule exactly.
  ``benchmarks/bench_streams.py`` compares two alternatives (:data:`CONTROL_RULE`):
  correcting every window step with the frozen ``u``/``v`` and advancing them by the
  newest step's increments (``"correct-all"``: R^2 ~0 on the recall task, where this
  rule gets 0.89), or by the mean of all steps' increments (``"mean"``: learns at hidden
  ``[32]``, but ``v`` feeds back into its own increments through the recurrence and
  reached 1e18 after ~1,000 steps with hidden ``[128, 64]``, ``bptt`` 16).
* A step whose loss, gradients or updated weights are not finite is rolled back: the
  forward statistics its arrival advanced are restored, ``u``/``v`` never changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from model import functional as F
from model.layers import OnlineNorm
from model.networks import NormalizedRNNLayer, make_input_norm
from model.spec import ModelSpec
from model.stream_state import StreamLayout, StreamState, WindowStep

#: How ON's control processes meet the window: ``"arrival"`` (the rule, see above);
#: ``"correct-all"`` and ``"mean"`` are the alternatives ``benchmarks/bench_streams.py``
#: compares it with (both worse there), kept for that comparison only.
CONTROL_RULE = "arrival"
#: rule -> (only the newest step adds increments, every step's backward is corrected)
_RULES = {"arrival": (True, False), "correct-all": (True, True), "mean": (False, True)}


@dataclass
class Control:
    """One ON layer's control processes for a window: read as they were before the step,
    increments summed, added by :meth:`commit` once the step is certain."""

    u: Tensor
    v: Tensor
    k: float  #: ``1 - alpha_bkw``
    newest_only: bool = True  #: only the window's last step contributes increments
    corrects_all: bool = True  #: every window step's backward is corrected (else the newest only)
    du: Tensor = field(init=False)
    dv: Tensor = field(init=False)
    count: int = 0

    def __post_init__(self) -> None:
        self.du = torch.zeros_like(self.u)
        self.dv = torch.zeros_like(self.v)

    def accumulates(self, newest: bool) -> bool:
        return newest or not self.newest_only

    def corrects(self, newest: bool) -> bool:
        return newest or self.corrects_all

    def commit(self) -> None:
        """``u += mean(dx)``, ``v += mean(g * y)`` over the contributing steps: once per step."""
        if self.count:
            self.u.add_(self.du, alpha=1.0 / self.count)
            self.v.add_(self.dv, alpha=1.0 / self.count)


class WindowOnlineNorm(torch.autograd.Function):
    """ON of one ``(1, C)`` window step with given statistics: nothing advances forward.
    Backward: ON's control-process backward for the newest step (its increments summed
    into ``control``), the affine map's exact derivative for the others (under
    :data:`CONTROL_RULE` ``"arrival"``).

    ``apply(x, weight, bias, mu, var, eps, control, newest)``. The forward is
    :func:`model.functional._normalize`, the one the arrival's ON forward uses, so equal
    inputs and statistics give the arrival's output bit for bit.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        mu: Tensor,
        var: Tensor,
        eps: float,
        control: Control,
        newest: bool,
    ) -> Tensor:
        c, inv_s, scale, out = F._normalize(x, mu, var, weight, bias, eps)
        ctx.saved = (c, inv_s, scale)
        ctx.control = control
        ctx.newest = newest
        ctx.dtypes = (x.dtype, None if weight is None else weight.dtype)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor):  # type: ignore[override]
        c, inv_s, scale = ctx.saved
        ctrl: Control = ctx.control
        k = ctrl.k if ctrl.corrects(ctx.newest) else 0.0
        dz = grad_out.to(inv_s.dtype)[0]
        c0 = c[0]
        y = c0 * inv_s
        e = dz * scale - k * (ctrl.v * inv_s) * y  # g / s
        dx = e - k * ctrl.u
        if ctrl.accumulates(ctx.newest):
            ctrl.dv.add_(c0 * e)  # g * y
            ctrl.du.add_(dx)
            ctrl.count += 1
        x_dtype, w_dtype = ctx.dtypes
        grad_w = None if w_dtype is None else (dz * y).to(w_dtype)
        return (
            dx[None].to(x_dtype),
            grad_w,
            None if w_dtype is None else dz.to(w_dtype),
            None,
            None,
            None,
            None,
            None,
        )


def _window_norm(
    layer: NormalizedRNNLayer, a: Tensor, mu: Tensor, var: Tensor, control: Control, newest: bool
) -> Tensor:
    norm = layer.norm
    assert isinstance(norm, OnlineNorm)
    h = WindowOnlineNorm.apply(a, norm.weight, norm.bias, mu, var, norm.eps, control, newest)
    comp = norm.compensation
    return h if isinstance(comp, nn.Identity) else comp(h)


class StatefulRNN(nn.Module):
    """``[F]`` time steps of many streams; norm ``online``, ``layer`` or ``none``.

    :meth:`advance` is a stream's step on arrival (it advances the forward statistics
    and records the window step), :meth:`window` the recomputation a labelled step
    learns from. ``forward`` runs ``(N, T, F)`` sequences from zero states, as
    :class:`~model.networks.RNN` does (for generic callers; the learner does not use it).
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.layout = StreamLayout.of(spec)
        width = self.layout.features
        self.input_norm = make_input_norm(spec, width, spatial=False)
        layers = []
        for hidden in spec.network.hidden:
            layers.append(NormalizedRNNLayer(width, hidden, spec.norm))
            width = hidden
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(width, spec.output_size)
        self.online = self.layout.online

    def _split(self, hidden: Tensor) -> list[Tensor]:
        """``(H,)`` -> one ``(1, H_l)`` tensor per layer."""
        return [h.view(1, -1) for h in torch.split(hidden, self.layout.hidden)]

    @torch.no_grad()
    def advance(self, x: Tensor, hidden: Tensor) -> tuple[Tensor, WindowStep]:
        """One arriving step: ``x`` ``(F,)`` raw, ``hidden`` ``(H,)`` the stream's states.

        Returns the head's output ``(1, K)`` and the window step to store. The ON
        modules must be in training mode: their forward statistics advance once here.
        """
        inp = self.input_norm(x.view(1, -1))
        inputs = inp[0].clone()
        hs, mus, vars_ = [], [], []
        for layer, h in zip(self.layers, self._split(hidden), strict=True):
            a = layer.input_proj(inp) + layer.recurrent(h)
            if self.online:
                mus.append(layer.norm.mu.clone())
                vars_.append(layer.norm.var.clone())
            inp = torch.tanh(layer.norm(a))
            hs.append(inp[0])
        out = self.head(inp)
        cat = torch.cat
        step = WindowStep(
            inputs, cat(hs), cat(mus) if self.online else None, cat(vars_) if self.online else None
        )
        return out, step

    def controls(self) -> list[Control]:
        """Fresh accumulators of every ON layer's control processes, for one window."""
        if not self.online:
            return []
        newest_only, corrects_all = _RULES[CONTROL_RULE]
        return [
            Control(layer.norm.u, layer.norm.v, 1.0 - layer.norm.alpha_bkw, newest_only, corrects_all)
            for layer in self.layers
        ]

    def window(self, state: StreamState, controls: list[Control]) -> Tensor:
        """The window's last output ``(1, K)``, recomputed with autograd from ``state.h0``.

        Call with the compensation modules in eval mode (no health record) and grad
        enabled; the ON statistics used are the stored ones: nothing advances.
        """
        device = self.head.weight.device
        hs = self._split(state.h0.to(device))
        sizes = self.layout.hidden
        inp = None
        last = len(state.steps) - 1
        for t, step in enumerate(state.steps):
            inp = step.inputs.to(device).view(1, -1)
            mus = torch.split(step.mu.to(device), sizes) if step.mu is not None else None
            vars_ = torch.split(step.var.to(device), sizes) if step.var is not None else None
            for i, layer in enumerate(self.layers):
                a = layer.input_proj(inp) + layer.recurrent(hs[i])
                if mus is not None and vars_ is not None:
                    z = _window_norm(layer, a, mus[i], vars_[i], controls[i], t == last)
                else:
                    z = layer.norm(a)
                inp = torch.tanh(z)
                hs[i] = inp
        if inp is None:
            raise ValueError("the stream has no step to learn from")
        return self.head(inp)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, T, F)`` sequences from zero states: the head on each last hidden state."""
        h = self.input_norm(x.transpose(1, 2)).transpose(1, 2)
        for layer in self.layers:
            h = layer(h)
        return self.head(h[:, -1])
