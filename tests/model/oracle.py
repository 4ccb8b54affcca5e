"""Float64 NumPy oracle of Online Normalization, written from ``shared/ONLINE_NORM.md``.

It processes samples strictly one at a time, exactly as the algorithm is defined, so
that the vectorized implementation in :mod:`model` can be checked against the
definition rather than against itself. Nothing here imports :mod:`model`.

Shapes: a batch is ``(N, C, *S)``; a sample is ``(C, *S)``; every statistic ``(C,)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Array = np.ndarray


def _per_channel(t: Array, ndim: int) -> Array:
    """``(C,)`` -> ``(C, 1, ...)`` so that it broadcasts over one ``(C, *S)`` sample."""
    return t.reshape(t.shape + (1,) * (ndim - 1))


def _mean_s(t: Array) -> Array:
    """Mean over the spatial axes of one ``(C, *S)`` sample (identity when S is empty)."""
    return t.reshape(t.shape[0], -1).mean(axis=1)


def _var_s(t: Array) -> Array:
    """Population variance over the spatial axes of one sample (0 when S is empty)."""
    flat = t.reshape(t.shape[0], -1)
    return ((flat - flat.mean(axis=1, keepdims=True)) ** 2).mean(axis=1)


def layer_scaling_forward(h: Array, eps: float, group_size: int | None = None) -> Array:
    """ECM "ls" of one sample: ``h / sqrt(mean(h^2) + eps)``, mean over all of ``(C, *S)``,
    or over each group of ``group_size`` consecutive channels (with their ``S``)."""
    if group_size is not None:
        return np.concatenate(
            [layer_scaling_forward(h[g : g + group_size], eps) for g in range(0, h.shape[0], group_size)]
        )
    return h / np.sqrt(np.mean(h * h) + eps)


def layer_scaling_backward(h: Array, grad: Array, eps: float, group_size: int | None = None) -> Array:
    """Hand-derived gradient of :func:`layer_scaling_forward` w.r.t. ``h``.

    With ``r = sqrt(mean(h^2) + eps)`` and ``P`` elements, ``dz_j/dh_i = delta_ij / r
    - h_i h_j / (P r^3)``, so ``dh = grad / r - h * sum(grad * h) / (P r^3)``. Groups
    are independent: the formula holds per group.
    """
    if group_size is not None:
        return np.concatenate(
            [
                layer_scaling_backward(h[g : g + group_size], grad[g : g + group_size], eps)
                for g in range(0, h.shape[0], group_size)
            ]
        )
    r = np.sqrt(np.mean(h * h) + eps)
    return grad / r - h * np.sum(grad * h) / (h.size * r**3)


def activation_clamp_forward(h: Array, clamp_val: float) -> Array:
    """ECM "ac" of one sample."""
    return np.clip(h, -clamp_val, clamp_val)


def activation_clamp_backward(h: Array, grad: Array, clamp_val: float) -> Array:
    """Gradient of the clamp: passed through inside ``[-c, c]``, 0 where clamped."""
    return np.where(np.abs(h) <= clamp_val, grad, 0.0)


@dataclass
class ForwardRecord:
    """What one forward call keeps for its backward: per-sample ``y_n``, ``s_n``, ``h_n``."""

    y: list[Array] = field(default_factory=list)
    s: list[Array] = field(default_factory=list)
    h: list[Array] = field(default_factory=list)


class OnlineNormOracle:
    """One ON layer (normalizer, affine, ECM) evaluated sample by sample in float64."""

    def __init__(
        self,
        num_features: int,
        alpha_fwd: float = 0.999,
        alpha_bkw: float = 0.99,
        eps: float = 1e-5,
        weight: Array | None = None,
        bias: Array | None = None,
        ecm: str | None = "ls",
        ls_eps: float = 1e-5,
        clamp_val: float = 5.0,
        warmup: bool = False,
        ls_group_size: int | None = None,
    ) -> None:
        self.num_features = num_features
        self.ls_group_size = ls_group_size
        self.alpha_fwd = alpha_fwd
        self.alpha_bkw = alpha_bkw
        self.eps = eps
        self.weight = None if weight is None else np.asarray(weight, dtype=np.float64).copy()
        self.bias = None if bias is None else np.asarray(bias, dtype=np.float64).copy()
        self.ecm = ecm
        self.ls_eps = ls_eps
        self.clamp_val = clamp_val
        self.warmup = warmup
        self.mu = np.zeros(num_features)
        self.var = np.ones(num_features)
        self.u = np.zeros(num_features)
        self.v = np.zeros(num_features)
        self.seen = 0

    # -- pieces -----------------------------------------------------------------------
    def _alpha(self) -> float:
        """Forward decay of the next sample: constant, or the warm-up ``(t+1)/(t+2)``."""
        if not self.warmup:
            return self.alpha_fwd
        t = self.seen
        return min(self.alpha_fwd, (t + 1) / (t + 2))

    def _affine(self, y: Array) -> Array:
        h = y
        if self.weight is not None:
            h = h * _per_channel(self.weight, y.ndim)
        if self.bias is not None:
            h = h + _per_channel(self.bias, y.ndim)
        return h

    def _ecm(self, h: Array) -> Array:
        if self.ecm == "ls":
            return layer_scaling_forward(h, self.ls_eps, self.ls_group_size)
        if self.ecm == "ac":
            return activation_clamp_forward(h, self.clamp_val)
        assert self.ecm is None
        return h

    def _ecm_backward(self, h: Array, grad: Array) -> Array:
        if self.ecm == "ls":
            return layer_scaling_backward(h, grad, self.ls_eps, self.ls_group_size)
        if self.ecm == "ac":
            return activation_clamp_backward(h, grad, self.clamp_val)
        return grad

    # -- the layer ----------------------------------------------------------------------
    def forward(self, x: Array) -> tuple[Array, ForwardRecord]:
        """Training forward of a batch ``(N, C, *S)``, one sample at a time."""
        x = np.asarray(x, dtype=np.float64)
        assert x.shape[1] == self.num_features
        record = ForwardRecord()
        out = np.empty_like(x)
        for n in range(x.shape[0]):
            xn = x[n]
            a = self._alpha()
            s = np.sqrt(self.var + self.eps)
            y = (xn - _per_channel(self.mu, xn.ndim)) / _per_channel(s, xn.ndim)
            m = _mean_s(xn)
            q = _var_s(xn)
            d = m - self.mu
            self.var = a * self.var + (1 - a) * q + a * (1 - a) * d * d
            self.mu = self.mu + (1 - a) * d
            self.seen += 1
            h = self._affine(y)
            out[n] = self._ecm(h)
            record.y.append(y)
            record.s.append(s)
            record.h.append(h)
        return out, record

    def backward(self, record: ForwardRecord, grad: Array) -> tuple[Array, Array | None, Array | None]:
        """Backward of one forward call, samples in stream order n = 0 .. N-1.

        Returns ``(dx, dweight, dbias)``; advances ``u`` and ``v``.
        """
        grad = np.asarray(grad, dtype=np.float64)
        k = 1.0 - self.alpha_bkw
        dx = np.empty_like(grad)
        dweight = np.zeros(self.num_features)
        dbias = np.zeros(self.num_features)
        for n in range(grad.shape[0]):
            y, s, h = record.y[n], record.s[n], record.h[n]
            dh = self._ecm_backward(h, grad[n])
            axes = tuple(range(1, dh.ndim))
            dweight += np.sum(dh * y, axis=axes)
            dbias += np.sum(dh, axis=axes)
            dy = dh if self.weight is None else dh * _per_channel(self.weight, dh.ndim)
            g = dy - k * _per_channel(self.v, y.ndim) * y
            self.v = self.v + _mean_s(g * y)
            dxn = g / _per_channel(s, y.ndim) - k * _per_channel(self.u, y.ndim)
            self.u = self.u + _mean_s(dxn)
            dx[n] = dxn
        return (
            dx,
            None if self.weight is None else dweight,
            None if self.bias is None else dbias,
        )

    def eval_forward(self, x: Array) -> Array:
        """Eval mode: frozen state, nothing updated."""
        x = np.asarray(x, dtype=np.float64)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        y = (x - self.mu.reshape(shape)) / np.sqrt(self.var + self.eps).reshape(shape)
        return np.stack([self._ecm(self._affine(yn)) for yn in y])

    def state(self) -> dict[str, Array]:
        """Copies of the four state vectors, keyed by the module's buffer names."""
        return {"mu": self.mu.copy(), "var": self.var.copy(), "u": self.u.copy(), "v": self.v.copy()}
