"""The cnn's one-sample step written out in torch operations, without the autograd tape.

A cnn's step is mostly convolutions, which NumPy has no business doing, so this step
stays in torch, on the same kernels as the eager step: ``conv2d`` and its
``convolution_backward``, ``max_pool2d`` with indices and its backward, and the ON
layer's own batch-of-one functions (``model.functional._normalize``, ``_step_spatial``,
``_step_spatial_backward``). What it drops is the tape: the autograd graph, the custom
Functions' contexts, the per-node bookkeeping, ``optimizer.step()``'s wrappers. Its
prediction is the eager eval output bit for bit (the same operations in the same order).

As in :mod:`model.fast.mlp`, a step is computed on copies of the ON state and written
only by :meth:`Pending.apply`, after its loss and gradient norm are checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as tf

from model import functional as F
from model.fast.base import Pending, StepBase, clamped_input
from model.layers import ActivationClamp, LayerScaling, OnlineNorm


class _Norm2d:
    """An ``OnlineNorm2d`` layer stepped on copies of its state."""

    def __init__(self, m: OnlineNorm) -> None:
        self.m = m
        comp = m.compensation
        self.ls = comp if isinstance(comp, LayerScaling) else None
        self.ac = comp if isinstance(comp, ActivationClamp) else None
        self.k = 1.0 - m.alpha_bkw

    def forward(self, x: Tensor) -> tuple[Tensor, list]:
        m = self.m
        seen = m.num_samples_tracked
        a = F._forward_coefficient(m.alpha_fwd, 1, seen, x.dtype) if m.warmup else m.alpha_fwd
        c, inv_s, scale, out = F._normalize(x, m.mu, m.var, m.weight, m.bias, m.eps)
        mu, var = m.mu.clone(), m.var.clone()
        d0, q0 = F._step_spatial(c, mu, var, float(a))
        return out, [(c, inv_s, scale, d0, q0), mu, var, None, None]

    def backward(self, dz: Tensor, cache: list) -> tuple[Tensor, Tensor, Tensor]:
        u, v = self.m.u.clone(), self.m.v.clone()
        dx, gw, gb = F._step_spatial_backward(dz, cache[0], u, v, self.k)
        cache[3], cache[4] = u, v
        return dx, gw, gb

    def commit(self, cache: list) -> None:
        m = self.m
        m.mu.copy_(cache[1])
        m.var.copy_(cache[2])
        if cache[3] is not None:
            m.u.copy_(cache[3])
            m.v.copy_(cache[4])
        m.num_samples_tracked.add_(1)

    # ------------------------------------------------------------ compensation
    def compensate(self, h: Tensor) -> tuple[Tensor, Any]:
        """``LayerScalingFunction.forward``'s operations, or the clamp."""
        if self.ls is not None:
            dims = tuple(range(1, h.dim()))
            mean_sq = torch.linalg.vector_norm(h, 2, dims, keepdim=True).div_(h[0].numel() ** 0.5).square_()
            r = torch.rsqrt(mean_sq + self.ls.eps)
            z = h * r
            return z, (z, r, mean_sq)
        if self.ac is not None:
            return torch.clamp(h, -self.ac.clamp_val, self.ac.clamp_val), h
        return h, None

    def compensate_backward(self, dz: Tensor, cache: Any) -> Tensor:
        if self.ls is not None:
            z, r, _ = cache
            buf = dz * z
            proj = buf.mean(tuple(range(1, z.dim())), keepdim=True)
            return torch.addcmul(dz, z, proj, value=-1, out=buf).mul_(r)
        if self.ac is not None:
            cv = self.ac.clamp_val
            return dz * ((cache >= -cv) & (cache <= cv))
        return dz

    def record_health(self, cache: Any) -> None:
        if self.ls is not None:
            self.ls.last_mean_sq = cache[2]
        elif self.ac is not None:
            self.ac.last_input = cache


@dataclass
class _Block:
    conv: nn.Conv2d
    norm: _Norm2d | None
    pool: bool


class CNNStep(StepBase):
    """The explicit one-sample step of :class:`model.networks.CNN` on CPU."""

    def _bind(self, network: nn.Module) -> None:
        inorm = network.input_norm
        self.input_norm = clamped_input(_Norm2d(inorm) if isinstance(inorm, OnlineNorm) else None, inorm)
        self.blocks = [self._block(b) for b in network.blocks]
        self.head = network.head

    @staticmethod
    def _block(block: nn.Sequential) -> _Block:
        conv, norm, act, *pool = block
        if not isinstance(act, nn.ReLU) or (pool and not isinstance(pool[0], nn.MaxPool2d)):
            raise ValueError("unsupported cnn block")
        if isinstance(norm, OnlineNorm):
            wrapped: _Norm2d | None = _Norm2d(norm)
        elif isinstance(norm, nn.Identity):
            wrapped = None
        else:
            raise ValueError(
                f"the fast cnn step covers online or no normalization, not {type(norm).__name__}"
            )
        return _Block(conv, wrapped, bool(pool))

    def _grad(self, p: Tensor) -> Tensor:
        return self.grads.tensors[id(p)]

    # ------------------------------------------------------------------ eval
    @torch.no_grad()
    def predict(self, xs: np.ndarray) -> np.ndarray:
        """Eval-mode outputs: the network's own eval forward (the eager one)."""
        self.network.train(False)
        return self.network(torch.from_numpy(xs)).numpy()

    # ----------------------------------------------------------------- train
    @torch.no_grad()
    def compute(self, x: np.ndarray, y: int | np.ndarray) -> Pending:
        """Forward, loss and backward of one sample ``(C, H, W)``; writes no state."""
        h = torch.from_numpy(x)[None]
        in_cache = None
        if self.input_norm is not None:
            h, in_cache = self.input_norm.forward(h)
        traces = []
        for blk in self.blocks:
            h_in = h
            pre = tf.conv2d(h, blk.conv.weight, blk.conv.bias, padding=1)
            n_cache = c_cache = None
            o = pre
            if blk.norm is not None:
                o, n_cache = blk.norm.forward(pre)
                o, c_cache = blk.norm.compensate(o)
            r = torch.relu(o)
            idx = None
            h = r
            if blk.pool:
                h, idx = tf.max_pool2d(r, 2, return_indices=True)
            traces.append((h_in, n_cache, c_cache, r, idx))
        feat = h.mean(dim=(2, 3))
        out = tf.linear(feat, self.head.weight, self.head.bias)
        if self.classify:
            target = torch.tensor([y])
            loss = tf.cross_entropy(out, target)
            g = torch.softmax(out, dim=1)
            g[0, y] -= 1
        else:
            yt = torch.from_numpy(np.asarray(y))[None]
            loss = tf.mse_loss(out, yt)
            g = (out - yt) * (2.0 / out.numel())
        self._grad(self.head.weight).copy_(g.T @ feat)
        self._grad(self.head.bias).copy_(g[0])
        gh = (g @ self.head.weight)[:, :, None, None].expand(h.shape) / (h.shape[2] * h.shape[3])
        for i in range(len(self.blocks) - 1, -1, -1):
            blk = self.blocks[i]
            h_in, n_cache, c_cache, r, idx = traces[i]
            if blk.pool:
                gh = torch.ops.aten.max_pool2d_with_indices_backward(
                    gh, r, [2, 2], [2, 2], [0, 0], [1, 1], False, idx
                )
            g = torch.ops.aten.threshold_backward(gh, r, 0)
            if blk.norm is not None:
                g = blk.norm.compensate_backward(g, c_cache)
                g, gw, gb = blk.norm.backward(g, n_cache)
                self._grad(blk.norm.m.weight).copy_(gw)
                self._grad(blk.norm.m.bias).copy_(gb)
            conv = blk.conv
            g_in, g_w, g_b = torch.ops.aten.convolution_backward(
                g,
                h_in,
                conv.weight,
                None if conv.bias is None else [conv.bias.shape[0]],
                [1, 1],
                [1, 1],
                [1, 1],
                False,
                [0, 0],
                1,
                [i > 0, True, conv.bias is not None],
            )
            self._grad(conv.weight).copy_(g_w)
            if conv.bias is not None:
                self._grad(conv.bias).copy_(g_b)
            gh = g_in
        grad_norm = self.grads.norm()
        loss_value = float(loss)
        return Pending(
            loss_value, grad_norm, out[0].numpy(), lambda: self._apply(in_cache, traces, grad_norm)
        )

    @torch.no_grad()
    def _apply(self, in_cache: Any, traces: list, grad_norm: float) -> None:
        self._clip(grad_norm)
        if self.input_norm is not None:
            self.input_norm.commit(in_cache)
        for blk, (_, n_cache, c_cache, _, _) in zip(self.blocks, traces, strict=True):
            if blk.norm is not None:
                blk.norm.commit(n_cache)
                blk.norm.record_health(c_cache)
        self.update.step(self.group_grads)
