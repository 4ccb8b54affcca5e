"""Online Normalization as functions over explicit state tensors.

The maths of ``../shared/ONLINE_NORM.md``: forward statistics (eq. 8-10 of the paper,
generalized to ``(N, C, *S)``), the two backward control processes, layer scaling and
activation clamping. Modules in :mod:`model.layers` only hold parameters and buffers
and call these functions, like ``torch.nn.functional.batch_norm``.

Shapes: ``x`` is ``(N, C, *S)``; every statistic and state tensor is ``(C,)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.scan import linear_scan


def state_dtype(x: Tensor) -> torch.dtype:
    """float64 for float64 inputs, else float32: half-precision state would drift."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _expand(t: Tensor, ndim: int) -> Tensor:
    """``(N, C)`` -> ``(N, C, 1, ...)`` to broadcast over ``ndim``-dim inputs."""
    return t.reshape(t.shape + (1,) * (ndim - 2))


def _forward_coefficient(alpha_fwd: float, n: int, seen: Tensor | None, dtype: torch.dtype) -> float | Tensor:
    """The forward decay of each sample: constant, or warmed up from the prior.

    With warm-up the prior ``(mu=0, var=1)`` counts as one pseudo-sample:
    ``alpha_n = min(alpha_fwd, (t_n + 1) / (t_n + 2))`` with ``t_n`` samples seen before
    sample ``n``. The first estimates are then exact running means, and the variance
    estimate is never 0.
    """
    if seen is None:
        return alpha_fwd
    t = seen.to(dtype) + torch.arange(n, dtype=dtype, device=seen.device)
    return torch.clamp((t + 1) / (t + 2), max=alpha_fwd)[:, None]


def forward_statistics(
    x: Tensor, mu: Tensor, var: Tensor, alpha_fwd: float, seen: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-sample statistics and the state each sample is normalized with.

    Returns ``(mu_before, var_before, mu_last, var_last, mean_s, var_s)``: the first two
    are ``(N, C)`` (the state sample ``n`` sees), the next two ``(C,)`` (the state after
    the batch), the last two ``(N, C)`` spatial mean and variance of each sample.
    """
    cdt = state_dtype(x)
    xc = x.to(cdt)
    if x.dim() > 2:
        var_s, mean_s = torch.var_mean(xc, dim=tuple(range(2, x.dim())), correction=0)
    else:
        mean_s, var_s = xc, torch.zeros_like(xc)
    a = _forward_coefficient(alpha_fwd, x.shape[0], seen, cdt)
    mu0, var0 = mu.to(cdt), var.to(cdt)
    mu_before, mu_last = linear_scan(a, (1 - a) * mean_s, mu0)
    d = mean_s - mu_before
    var_in = (1 - a) * (var_s + a * d * d)
    var_before, var_last = linear_scan(a, var_in, var0)
    return mu_before, var_before, mu_last, var_last, mean_s, var_s


class OnlineNormFunction(torch.autograd.Function):
    """Training-mode ON with the affine transform fused in.

    Forward advances ``mu``, ``var`` (and ``seen``) once; backward advances ``u``, ``v``
    once, in stream order. The backward is ON's control-process gradient, not
    autograd's derivative of the forward; ``weight`` and ``bias`` get exact gradients.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        mu: Tensor,
        var: Tensor,
        u: Tensor,
        v: Tensor,
        seen: Tensor | None,
        alpha_fwd: float,
        alpha_bkw: float,
        eps: float,
    ) -> Tensor:
        nd = x.dim()
        mu_b, var_b, mu_last, var_last, mean_s, var_s = forward_statistics(x, mu, var, alpha_fwd, seen)
        inv_s = torch.rsqrt(var_b + eps)
        d = mean_s - mu_b
        centered = x.to(inv_s.dtype) - _expand(mu_b, nd)
        scale = inv_s if weight is None else inv_s * weight.to(inv_s.dtype)
        shift = bias.to(inv_s.dtype).expand_as(scale) if bias is not None else None
        if shift is None:
            out = centered * _expand(scale, nd)
        else:
            out = torch.addcmul(_expand(shift, nd), centered, _expand(scale, nd))
        with torch.no_grad():
            mu.copy_(mu_last)
            var.copy_(var_last)
            if seen is not None:
                seen.add_(x.shape[0])
        # mean_S(y_n) and mean_S(y_n^2), needed by the control processes
        mean_y = d * inv_s
        mean_y2 = (var_s + d * d) * inv_s * inv_s
        ctx.save_for_backward(centered, inv_s, mean_y, mean_y2, weight)
        ctx.state = (u, v)
        ctx.alpha_bkw = alpha_bkw
        ctx.has_bias = bias is not None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.x_dtype = x.dtype
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor):  # type: ignore[override]
        centered, inv_s, mean_y, mean_y2, weight = ctx.saved_tensors
        u, v = ctx.state
        k = 1.0 - ctx.alpha_bkw
        nd = centered.dim()
        dz = grad_out.to(inv_s.dtype)
        if nd > 2:
            dims = tuple(range(2, nd))
            size = centered[0, 0].numel()
            mean_dz = dz.mean(dim=dims)
            mean_dz_y = (dz * centered).mean(dim=dims) * inv_s
        else:
            size = 1
            mean_dz = dz
            mean_dz_y = dz * centered * inv_s
        w = None if weight is None else weight.to(inv_s.dtype)
        mean_dy = mean_dz if w is None else mean_dz * w
        mean_dy_y = mean_dz_y if w is None else mean_dz_y * w
        # v_n = (1 - k * mean_S(y_n^2)) v_{n-1} + mean_S(dy_n * y_n)
        v_b, v_last = linear_scan(1.0 - k * mean_y2, mean_dy_y, v.to(inv_s.dtype))
        # u_n = alpha_bkw u_{n-1} + mean_S(g_n) / s_n
        u_in = (mean_dy - k * v_b * mean_y) * inv_s
        u_b, u_last = linear_scan(ctx.alpha_bkw, u_in, u.to(inv_s.dtype))
        # dx = (dy - k v y) / s - k u, with dy = dz * w and y = centered * inv_s
        a = inv_s if w is None else inv_s * w
        b = -k * v_b * inv_s * inv_s
        grad_x = torch.addcmul(_expand(-k * u_b, nd), dz, _expand(a, nd))
        grad_x.addcmul_(centered, _expand(b, nd))
        with torch.no_grad():
            v.copy_(v_last)
            u.copy_(u_last)
        grad_w = mean_dz_y.sum(0) * size if w is not None and ctx.needs_input_grad[1] else None
        grad_b = mean_dz.sum(0) * size if ctx.has_bias and ctx.needs_input_grad[2] else None
        if grad_w is not None:
            grad_w = grad_w.to(weight.dtype)
        if grad_b is not None:
            grad_b = grad_b.to(ctx.bias_dtype)
        return grad_x.to(ctx.x_dtype), grad_w, grad_b, None, None, None, None, None, None, None, None


def online_norm(
    x: Tensor,
    mu: Tensor,
    var: Tensor,
    u: Tensor,
    v: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    training: bool = True,
    alpha_fwd: float = 0.999,
    alpha_bkw: float = 0.99,
    eps: float = 1e-5,
    seen: Tensor | None = None,
) -> Tensor:
    """Online Normalization of ``x`` ``(N, C, *S)`` followed by the affine transform.

    Training: samples are normalized in order with the statistics of the samples before
    them; ``mu``/``var`` (and ``seen``, when given, which turns on the warm-up) advance
    in place now, ``u``/``v`` in place during backward. Eval: frozen state, no update.
    """
    if training:
        return OnlineNormFunction.apply(x, weight, bias, mu, var, u, v, seen, alpha_fwd, alpha_bkw, eps)
    cdt = state_dtype(x)
    nd = x.dim()
    shape = (1, -1) + (1,) * (nd - 2)
    inv_s = torch.rsqrt(var.to(cdt) + eps)
    scale = inv_s if weight is None else inv_s * weight.to(cdt)
    centered = x.to(cdt) - mu.to(cdt).reshape(shape)
    # the same operations as the training path, so a batch-1 training output equals
    # the eval output bit for bit (the learner's prequential prediction relies on it)
    if bias is None:
        out = centered * scale.reshape(shape)
    else:
        out = torch.addcmul(bias.to(cdt).reshape(shape), centered, scale.reshape(shape))
    return out.to(x.dtype)


def layer_scaling(h: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Per-sample ``h / sqrt(mean(h^2) + eps)``, mean over every non-batch element.

    Returns ``(scaled, mean_sq)``: ``mean_sq`` ``(N, 1, ...)`` is the mean square before
    scaling; its root is 1 when the normalizer's estimates are right (a health signal).
    """
    dims = tuple(range(1, h.dim()))
    mean_sq = h.pow(2).mean(dim=dims, keepdim=True)
    return h * torch.rsqrt(mean_sq + eps), mean_sq


def activation_clamp(h: Tensor, clamp_val: float = 5.0) -> Tensor:
    """``clamp(h, -clamp_val, clamp_val)``; gradient 0 where clamped (autograd's)."""
    return torch.clamp(h, -clamp_val, clamp_val)
