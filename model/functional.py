"""Online Normalization as functions over explicit state tensors.

The maths of ``../shared/ONLINE_NORM.md``: forward statistics (eq. 8-10 of the paper,
generalized to ``(N, C, *S)``), the two backward control processes, layer scaling and
activation clamping. Modules in :mod:`model.layers` only hold parameters and buffers
and call these functions, like ``torch.nn.functional.batch_norm``.

Shapes: ``x`` is ``(N, C, *S)``; every statistic and state tensor is ``(C,)``.

Speed notes (see ``benchmarks/bench_norm.py``): at small sizes the cost is the number
of tensor operations (a few microseconds of dispatch each), at large sizes the number of
passes over ``(N, C, *S)`` memory and of fresh large allocations (page faults). The
training path therefore works on ``(N, C)`` summaries wherever it can, makes four passes
over the input forward and five backward, and reuses one backward buffer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.scan import linear_scan


def state_dtype(x: Tensor) -> torch.dtype:
    """float64 for float64 inputs, else float32: half-precision state would drift."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype``; no dispatcher call in the common case where it already is."""
    return t if t.dtype == dtype else t.to(dtype)


def _expand(t: Tensor, ndim: int) -> Tensor:
    """``(N, C)`` -> ``(N, C, 1, ...)`` (or ``(C,)`` -> ``(C, 1, ...)``) to broadcast over
    ``(N, C, *S)`` inputs of ``ndim`` dims."""
    return t if ndim == 2 else t.view(t.shape + (1,) * (ndim - 2))


def _spatial_mean(t: Tensor, dims: tuple[int, ...], size: int) -> Tensor:
    """``mean_S(t)``; ``sum * (1 / size)`` costs fewer dispatches than ``mean`` on CPU."""
    return t.sum(dims).mul_(1.0 / size)


def _spatial_mean_square(t: Tensor, dims: tuple[int, ...], size: int) -> Tensor:
    """``mean_S(t**2)`` in one read of ``t`` and no temporary of its size."""
    return torch.linalg.vector_norm(t, 2, dims).square_().mul_(1.0 / size)


def _forward_coefficient(alpha_fwd: float, n: int, seen: Tensor | None, dtype: torch.dtype) -> float | Tensor:
    """The forward decay of each sample: constant, or warmed up from the prior.

    With warm-up the prior ``(mu=0, var=1)`` counts as one pseudo-sample:
    ``alpha_n = min(alpha_fwd, (t_n + 1) / (t_n + 2))`` with ``t_n`` samples seen before
    sample ``n``. The first estimates are then exact running means, and the variance
    estimate is never 0.
    """
    if seen is None:
        return alpha_fwd
    # One host read of the count. The warm-up ends after about 1/(1 - alpha_fwd)
    # samples; from then on (and for every batch of one) the coefficient is a Python
    # float, which keeps the streaming path on its few-operation fast path.
    t0 = int(seen)
    if (t0 + 1) / (t0 + 2) >= alpha_fwd:
        return alpha_fwd
    if n == 1:
        return (t0 + 1) / (t0 + 2)
    # computed in float64 like the Python floats above, then rounded once
    t = torch.arange(t0, t0 + n, dtype=torch.float64, device=seen.device)
    return torch.clamp((t + 1) / (t + 2), max=alpha_fwd)[:, None].to(dtype)


def _variance_input(a: float | Tensor, msq: Tensor, d: Tensor | None, out: Tensor) -> Tensor:
    """``(1 - a) * (var_S + a * d**2)``, the input of the variance recurrence, into ``out``.

    Written with ``msq = mean_S((x - mu)**2) = var_S + d**2`` as
    ``(1 - a) * (msq - (1 - a) * d**2)``: ``msq`` comes from the centered input the
    output needs anyway, which saves a separate (and on CPU slow, Welford) variance
    pass. The subtraction loses at most a factor ``(2 - a) / a`` of ``msq``'s rounding
    (about 1 at the default ``a = 0.999``, at most 3 for ``a >= 1/2`` as in warm-up).
    ``d is None`` means no spatial dims: ``var_S = 0`` and ``msq = d**2``.
    """
    if d is None:
        return torch.mul(msq, (1 - a) * a, out=out)
    if isinstance(a, float):
        return torch.addcmul(msq, d, d, value=-(1 - a), out=out).mul_(1 - a)
    return torch.mul(msq - (1 - a) * d * d, 1 - a, out=out)


def _step_statistics(
    xc: Tensor, mu: Tensor, var: Tensor, a: float, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Batch of one: normalize with the state as it is, then advance it one step in place.

    Returns ``(centered, d, msq, inv_s)`` like :func:`_scan_statistics`, with ``inv_s``
    of shape ``(C,)``. No scans: this is the streaming path, where latency is the number
    of tensor operations. ``a`` is a float: :func:`_forward_coefficient` gives one for
    every batch of one, warm-up included.
    """
    nd = xc.dim()
    cdt = xc.dtype
    mu0, var0 = _as(mu, cdt), _as(var, cdt)
    centered = xc - _expand(mu0, nd)
    w = 1 - a  # weight of the new sample
    if nd > 2:
        dims = tuple(range(2, nd))
        size = xc[0, 0].numel()
        d = _spatial_mean(centered, dims, size)
        msq = _spatial_mean_square(centered, dims, size)
        q = torch.addcmul(msq, d, d, value=-w)
    else:
        d = centered
        msq = centered * centered
        q = msq * a  # var_S = 0
    inv_s = torch.rsqrt(var0 + eps)
    # var_S + a d^2 = msq - (1 - a) d^2;  var <- var + (1 - a) (that - var);  mu <- mu + (1 - a) d
    if var.dtype == cdt:
        var.lerp_(q[0], w)
    else:
        var.copy_(torch.lerp(var0, q[0], w))
    mu.add_(d[0], alpha=w)
    return centered, d, msq, inv_s


def _scan_statistics(
    xc: Tensor, mu: Tensor, var: Tensor, a: float | Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Batch of N > 1: the forward recurrences as two linear scans; advances the state.

    Returns ``(centered, d, msq, inv_s)``: ``centered = x - mu_before`` ``(N, C, *S)``;
    ``(N, C)`` summaries ``d = mean_S(centered)``, ``msq = mean_S(centered**2)`` and the
    ``1 / sqrt(var_before + eps)`` each sample is normalized with. ``(N, C)`` buffers are
    reused in place where they are dead: at large N x C fresh allocations (page faults)
    cost more than the arithmetic.
    """
    nd = xc.dim()
    cdt = xc.dtype
    if nd > 2:
        dims = tuple(range(2, nd))
        size = xc[0, 0].numel()
        mean_s = _spatial_mean(xc, dims, size)
    else:
        mean_s = xc
    work = (1 - a) * mean_s  # the input of the mean recurrence, then of the variance one
    mu_b, mu_last = linear_scan(a, work, _as(mu, cdt))
    centered = xc - _expand(mu_b, nd)
    if nd > 2:
        d = mean_s.sub_(mu_b)
        msq = _spatial_mean_square(centered, dims, size)
        var_in = _variance_input(a, msq, d, out=work)
    else:
        d = centered
        msq = centered * centered
        var_in = _variance_input(a, msq, None, out=work)
    var_b, var_last = linear_scan(a, var_in, _as(var, cdt))
    inv_s = var_b.add_(eps).rsqrt_()  # var_b is a fresh buffer (N > 1)
    mu.copy_(mu_last)
    var.copy_(var_last)
    return centered, d, msq, inv_s


class OnlineNormFunction(torch.autograd.Function):
    """Training-mode ON with the affine transform fused in.

    Forward advances ``mu``, ``var`` (and ``seen``) once; backward advances ``u``, ``v``
    once, in stream order. The backward is ON's control-process gradient, not
    autograd's derivative of the forward; ``weight`` and ``bias`` get exact gradients.

    Everything per sample is carried as ``(N, C)`` summaries of the centered input
    ``c = x - mu_before``: its spatial mean ``d`` and mean square ``msq``, so that
    ``mean_S(y) = d / s`` and ``mean_S(y**2) = msq / s**2`` need no extra pass. A batch
    of one (streaming, the common case) skips the scans and advances the state by one
    step in place, which keeps the operation count, hence the latency, low.
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
        cdt = state_dtype(x)
        nd = x.dim()
        n = x.shape[0]
        a = alpha_fwd if seen is None else _forward_coefficient(alpha_fwd, n, seen, cdt)
        if n == 1:
            assert isinstance(a, float)
            centered, d, msq, inv_s = _step_statistics(_as(x, cdt), mu, var, a, eps)
        else:
            centered, d, msq, inv_s = _scan_statistics(_as(x, cdt), mu, var, a, eps)
        if seen is not None:
            seen.add_(n)
        scale = inv_s if weight is None else inv_s * _as(weight, cdt)
        if bias is None:
            out = centered * _expand(scale, nd)
        else:
            out = torch.addcmul(_expand(_as(bias, cdt), nd), centered, _expand(scale, nd))
        ctx.save_for_backward(centered, inv_s, scale, d, msq, weight)
        ctx.state = (u, v)
        ctx.alpha_bkw = alpha_bkw
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.x_dtype = x.dtype
        return _as(out, x.dtype)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor):  # type: ignore[override]
        centered, inv_s, scale, d, msq, weight = ctx.saved_tensors
        u, v = ctx.state
        alpha_bkw = ctx.alpha_bkw
        k = 1.0 - alpha_bkw
        nd = centered.dim()
        single = centered.shape[0] == 1
        cdt = inv_s.dtype
        dz = _as(grad_out, cdt)
        if nd > 2:
            dims = tuple(range(2, nd))
            buf = dz * centered  # reused below for grad_x: one large allocation, not two
            sum_dzc = buf.sum(dims)
            sum_dz = dz.sum(dims)
            scale_s = scale * (1.0 / centered[0, 0].numel())  # means over S from sums
        else:
            buf = None
            sum_dzc = dz * centered
            sum_dz = dz
            scale_s = scale
        inv_s2 = inv_s * inv_s
        v0, u0 = _as(v, cdt), _as(u, cdt)
        # v_n = (1 - k mean_S(y_n^2)) v_{n-1} + mean_S(dy_n y_n), dy = dz * weight
        v_in = sum_dzc * scale_s
        if single:
            v_b = v0
        else:
            coef_v = torch.mul(msq, inv_s2).mul_(-k).add_(1.0)
            v_b, v_last = linear_scan(coef_v, v_in, v0)
        vs2 = inv_s2.mul_(v_b)  # v / s^2
        if single:
            dv = torch.addcmul(v_in, msq, vs2, value=-k)
        # u_n = alpha_bkw u_{n-1} + mean_S(g_n) / s, g = dy - k v y; mean_S(y) = d / s
        u_in = torch.mul(sum_dz, scale_s).addcmul_(vs2, d, value=-k)
        if single:
            u_b = u0
            du = torch.add(u_in, u0, alpha=-k)  # mean_S(dx): u <- u + mean_S(dx)
        else:
            u_b, u_last = linear_scan(alpha_bkw, u_in, u0)
        grad_x = None
        if ctx.needs_input_grad[0]:
            # dx = (dy - k v y) / s - k u = dz * scale - k (v / s^2) c - k u
            if buf is None:  # no spatial dims: that is u_in - k u (u_in is dead: reuse it)
                grad_x = du if single else u_in.add_(u_b, alpha=-k)
            else:
                grad_x = torch.addcmul(_expand(u_b * -k, nd), dz, _expand(scale, nd), out=buf)
                grad_x.addcmul_(centered, _expand(vs2, nd), value=-k)
        if single:  # the state was only read above
            v.add_(dv[0])
            u.add_(du[0])
        else:
            v.copy_(v_last)
            u.copy_(u_last)
        grad_w = grad_b = None
        if weight is not None and ctx.needs_input_grad[1]:  # sum over N and S of dz * y
            grad_w = _as(sum_dzc.mul_(inv_s).sum(0), weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_b = _as(sum_dz.sum(0), ctx.bias_dtype)
        if grad_x is not None:
            grad_x = _as(grad_x, ctx.x_dtype)
        return grad_x, grad_w, grad_b, None, None, None, None, None, None, None, None


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
    # The same operations as a training batch of one (``_step_statistics`` and
    # ``OnlineNormFunction.forward``), so its output equals this one bit for bit: the
    # learner returns the training output as the prequential prediction.
    cdt = state_dtype(x)
    nd = x.dim()
    centered = _as(x, cdt) - _expand(_as(mu, cdt), nd)
    inv_s = torch.rsqrt(_as(var, cdt) + eps)
    scale = inv_s if weight is None else inv_s * _as(weight, cdt)
    if bias is None:
        out = centered * _expand(scale, nd)
    else:
        out = torch.addcmul(_expand(_as(bias, cdt), nd), centered, _expand(scale, nd))
    return _as(out, x.dtype)


class LayerScalingFunction(torch.autograd.Function):
    """``z = h / sqrt(mean(h^2) + eps)`` per sample, with its exact derivative.

    One autograd node instead of five (pow, mean, add, rsqrt, mul): with
    ``r = (mean(h^2) + eps)**-1/2`` the derivative is ``dh = r * (dz - z * mean(dz * z))``,
    the same function autograd differentiates, in two passes over the activations.
    Also returns ``mean(h^2)`` (no gradient), the layer's health signal.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, h: Tensor, eps: float):  # type: ignore[override]
        dims = tuple(range(1, h.dim()))
        size = h[0].numel()
        # the RMS first, then its square: no overflow of the sum of squares in half precision
        mean_sq = torch.linalg.vector_norm(h, 2, dims, keepdim=True).div_(size**0.5).square_()
        r = torch.rsqrt(mean_sq + eps)
        z = h * r
        ctx.save_for_backward(z, r)
        ctx.mark_non_differentiable(mean_sq)
        return z, mean_sq

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, dz: Tensor, _dmean_sq: Tensor):  # type: ignore[override]
        z, r = ctx.saved_tensors
        dims = tuple(range(1, z.dim()))
        buf = dz * z  # reused for the result: one large allocation
        proj = buf.mean(dims, keepdim=True)
        dh = torch.addcmul(dz, z, proj, value=-1, out=buf)
        return dh.mul_(r), None


def layer_scaling(h: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Per-sample ``h / sqrt(mean(h^2) + eps)``, mean over every non-batch element.

    Returns ``(scaled, mean_sq)``: ``mean_sq`` ``(N, 1, ...)`` is the mean square before
    scaling; its root is 1 when the normalizer's estimates are right (a health signal).
    """
    return LayerScalingFunction.apply(h, eps)


def activation_clamp(h: Tensor, clamp_val: float = 5.0) -> Tensor:
    """``clamp(h, -clamp_val, clamp_val)``; gradient 0 where clamped (autograd's)."""
    return torch.clamp(h, -clamp_val, clamp_val)
