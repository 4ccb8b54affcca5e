"""What every fast step shares: the gradient buffer, the pending step, the update.

A fast step computes a whole step without writing anything (:class:`Pending`), the
learner checks its loss and gradient norm, and only then :meth:`Pending.apply` clips,
advances the ON state and updates the weights. Gradients live in one flat buffer
(:class:`Grads`), so the total norm is one dot product and clipping one multiply.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from model.fast.optim import FusedUpdate
from model.networks import input_clamp

Array = np.ndarray


class Grads:
    """Every gradient as a view of one flat buffer; the fused update reads the views as
    tensors, NumPy code writes them as arrays."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        total = sum(p.numel() for p in params)
        self.flat = torch.empty(total, dtype=params[0].dtype)
        self.tensors: dict[int, Tensor] = {}
        offset = 0
        for p in params:
            self.tensors[id(p)] = self.flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        self.arrays = {key: t.numpy() for key, t in self.tensors.items()}
        self.flat_array = self.flat.numpy()

    def array(self, p: Tensor) -> Array:
        return self.arrays[id(p)]

    def norm(self) -> float:
        flat = self.flat_array
        return math.sqrt(float(np.dot(flat, flat)))


@dataclass
class Pending:
    """A computed step, not yet applied: its loss, gradient norm and output."""

    loss: float
    grad_norm: float
    output: Array
    apply: Callable[[], None] = field(repr=False)


class StepBase:
    """The gradient buffer and the fused update over every trainable parameter."""

    def __init__(
        self,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        classify: bool,
        clip_grad_norm: float | None,
    ) -> None:
        self.network = network
        self.classify = classify
        self.clip = clip_grad_norm
        self.update = FusedUpdate(optimizer)
        params = [p for p in network.parameters() if p.requires_grad]
        self.grads = Grads(params)
        self.group_grads = [
            [self.grads.tensors[id(p)] for p in group["params"]] for group in optimizer.param_groups
        ]
        if sorted(id(p) for g in optimizer.param_groups for p in g["params"]) != sorted(self.grads.tensors):
            raise ValueError("the optimizer must update every trainable parameter")
        self._bind(network)

    def _bind(self, network: nn.Module) -> None:
        """Take the views of ``network``'s tensors the step works on (per network kind)."""
        raise NotImplementedError

    def _clip(self, grad_norm: float) -> None:
        """``clip_grad_norm_``'s coefficient, clamped at 1 (a no-op multiply then)."""
        if self.clip is None:
            return
        dt = self.grads.flat_array.dtype.type
        coef = dt(self.clip) / (dt(grad_norm) + dt(1e-6))
        if coef < 1:
            self.grads.flat_array *= coef


def numpy_loss(out: Array, y: int | Array, classify: bool) -> tuple[float, Array]:
    """Cross-entropy (``y`` a class) or mean squared error, and its gradient w.r.t. ``out``."""
    if classify:
        assert isinstance(y, int)
        m = out.max()
        e = np.exp(out - m)
        s = e.sum()
        loss = float((m + np.log(s)) - out[y])
        g = e / s
        g[y] -= 1
        return loss, g
    diff = out - y
    return float((diff * diff).mean()), diff * out.dtype.type(2.0 / out.shape[0])


class ClampedInput:
    """A fast path's input standardizer whose outputs are clamped to ``±clamp``
    (``network.input_clamp``, :class:`model.networks.ClampedOnlineNorm1d` on the eager
    path); everything else is the standardizer's own."""

    def __init__(self, norm: Any, clamp: float) -> None:
        self.inner = norm  # not ``norm``: the rnn's standardizer has a ``norm`` of its own
        self.clamp = clamp

    def _clip(self, h: Any) -> Any:
        if isinstance(h, Tensor):
            return h.clamp(-self.clamp, self.clamp)
        c = h.dtype.type(self.clamp)
        return np.clip(h, -c, c)

    def forward(self, x: Any, *args: Any) -> tuple[Any, Any]:
        out, cache = self.inner.forward(x, *args)
        return self._clip(out), cache

    def eval(self, x: Any) -> Any:
        return self._clip(self.inner.eval(x))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def clamped_input(norm: Any, module: nn.Module) -> Any:
    """``norm`` (a fast input standardizer, or None), clamped if ``module`` clamps."""
    clamp = input_clamp(module)
    return norm if norm is None or clamp is None else ClampedInput(norm, float(clamp))
