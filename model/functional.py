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
over the input forward and five backward, and reuses one backward buffer. A batch of one
skips the scans, takes the whole state in one :class:`OnlineNormState` argument (apply
costs per argument), enters autograd's C++ apply directly, and on CPU advances a plain
``(1, C)`` state and runs its backward in NumPy, whose calls on C floats cost a fraction
of a tensor operation's dispatch (the torch step stays beside it as the reference).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from model.scan import linear_scan


def state_dtype(x: Tensor) -> torch.dtype:
    """float64 for float64 inputs, else float32: half-precision state would drift."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def compute_dtype(x: Tensor, mu: Tensor) -> torch.dtype:
    """The dtype the statistics are computed in: float64 if the input or the state is
    (a layer may keep float64 state for float32 inputs), else float32."""
    return torch.float64 if x.dtype == torch.float64 or mu.dtype == torch.float64 else torch.float32


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


class OnlineNormState(NamedTuple):
    """What :class:`OnlineNormFunction` reads besides ``x``, ``weight`` and ``bias``.

    One argument instead of eight: ``Function.apply`` pays for every argument, which
    at a batch of one is a visible share of the step.
    """

    mu: Tensor
    var: Tensor
    u: Tensor
    v: Tensor
    seen: Tensor | None  #: samples seen, advanced by each forward; ``None``: not counted
    warmup: bool  #: decay with ``min(alpha_fwd, (t+1)/(t+2))`` (needs ``seen``)
    alpha_fwd: float
    alpha_bkw: float
    eps: float


#: Advance the state and run the backward of a plain ``(1, C)`` CPU batch in NumPy: a
#: NumPy call on C floats costs a fraction of a tensor operation's dispatch, and at a
#: batch of one the dispatches are the time. The output itself is always computed by
#: :func:`_normalize` (so eval matches it bit for bit). ``False``: the torch reference.
NUMPY_STEP = True


def _forward_coefficient(
    alpha_fwd: float, n: int, seen: Tensor | int | None, dtype: torch.dtype
) -> float | Tensor:
    """The forward decay of each sample: constant, or warmed up from the prior.

    With warm-up the prior ``(mu=0, var=1)`` counts as one pseudo-sample:
    ``alpha_n = min(alpha_fwd, (t_n + 1) / (t_n + 2))`` with ``t_n`` samples seen before
    sample ``n``. The first estimates are then exact running means, and the variance
    estimate is never 0. ``seen`` may be a host count (the fast steps keep one), then
    only for ``n == 1``.
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


def _normalize(
    x: Tensor, mu: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(c, inv_s, scale, out)`` with the state as it is, for eval and a training batch of one.

    ``c = x - mu``, ``inv_s = 1 / sqrt(var + eps)``, ``scale = inv_s * weight`` and
    ``out = c * scale + bias``. One function for both modes, so that the eval output
    equals the training output bit for bit (the learner returns the latter as its
    prediction).
    """
    cdt = compute_dtype(x, mu)
    nd = x.dim()
    c = _as(x, cdt) - _expand(_as(mu, cdt), nd)
    inv_s = torch.rsqrt(_as(var, cdt) + eps)
    scale = inv_s if weight is None else inv_s * _as(weight, cdt)
    if bias is None:
        out = c * _expand(scale, nd)
    else:
        out = torch.addcmul(_expand(_as(bias, cdt), nd), c, _expand(scale, nd))
    return c, inv_s, scale, out


# ------------------------------------------------------------------ batch of one, (1, C)
# mu <- mu + (1 - a) d and var <- a (var + (1 - a) d^2) with d = c = x - mu (var_S = 0);
# backward with e = g / s = dz scale - k (v / s) y:  v <- v + c e,  dx = e - k u,  u <- u + dx.


def _use_numpy(c: Tensor) -> bool:
    """The NumPy step applies: plain ``(1, C)`` CPU float input, eager mode."""
    return NUMPY_STEP and c.dim() == 2 and c.device.type == "cpu" and not torch.compiler.is_compiling()


def _step_plain(c: Tensor, mu: Tensor, var: Tensor, a: float) -> None:
    """Advance ``mu``, ``var`` one sample in place (torch reference of :func:`_step_plain_np`)."""
    c0 = c[0]
    t = c0 * (1 - a)
    mu.add_(t)
    var.addcmul_(t, c0).mul_(a)


def _step_plain_np(c: Tensor, mu: Tensor, var: Tensor, seen: Tensor | None, a: float) -> None:
    """:func:`_step_plain` (and ``seen += 1``) in NumPy, on views of the same memory."""
    c0 = c.numpy()[0]
    t = c0 * (1 - a)
    mu_, var_ = mu.numpy(), var.numpy()
    mu_ += t
    t *= c0
    var_ += t
    var_ *= a
    if seen is not None:
        seen_ = seen.numpy()
        seen_ += 1


def _step_plain_backward(
    dz: Tensor, c: Tensor, inv_s: Tensor, scale: Tensor, u: Tensor, v: Tensor, k: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dweight, dbias)`` of a ``(1, C)`` batch; advances ``u``, ``v`` in place."""
    dz0, c0 = dz[0], c[0]
    y = c0 * inv_s
    e = torch.addcmul(dz0 * scale, v * inv_s, y, value=-k)
    dx = torch.add(e, u, alpha=-k)
    v.addcmul_(c0, e)
    u.add_(dx)
    return dx[None], dz0 * y, dz.sum(0)


def _step_plain_backward_np(
    dz: Tensor, c: Tensor, inv_s: Tensor, scale: Tensor, u: Tensor, v: Tensor, k: float
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_step_plain_backward` in NumPy."""
    dz0, c0 = dz.numpy(force=True)[0], c.numpy()[0]
    inv_s_, u_, v_ = inv_s.numpy(), u.numpy(), v.numpy()
    y = c0 * inv_s_
    e = dz0 * scale.numpy()
    e -= v_ * (k * inv_s_) * y
    dx = e - k * u_
    v_ += c0 * e
    u_ += dx
    return torch.from_numpy(dx[None]), torch.from_numpy(dz0 * y), torch.from_numpy(dz0.copy())


# ------------------------------------------------------------ batch of one, (1, C, *S)


def _step_spatial(c: Tensor, mu: Tensor, var: Tensor, a: float) -> tuple[Tensor, Tensor]:
    """Advance ``mu``, ``var`` one sample with spatial dims; returns ``(d, q)`` ``(C,)``.

    ``d = mean_S(c)``, ``q = var_S(c)``; ``var <- lerp(var, q, 1 - a) + a (1 - a) d^2``.
    """
    q, d = torch.var_mean(c, tuple(range(2, c.dim())), correction=0)
    d0, q0 = d[0], q[0]
    mu.add_(d0, alpha=1 - a)
    if var.dtype == c.dtype:
        var.lerp_(q0, 1 - a).addcmul_(d0, d0, value=a * (1 - a))
    else:  # lerp needs one dtype
        var.copy_(torch.lerp(var.to(c.dtype), q0, 1 - a).addcmul_(d0, d0, value=a * (1 - a)))
    return d0, q0


def _step_spatial_backward(
    dz: Tensor, saved: tuple[Tensor, ...], u: Tensor, v: Tensor, k: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dweight, dbias)`` of a ``(1, C, *S)`` batch; advances ``u``, ``v`` in place.

    With ``r = v / s^2``: ``dx = dz scale - k r c - k u``;
    ``v += mean_S(dz c) scale - k r (q + d^2)``; ``u += mean_S(dx)``.
    """
    c, inv_s, scale, d0, q0 = saved
    nd = c.dim()
    dims = (0, *range(2, nd))
    size = c[0, 0].numel()
    buf = dz * c  # reused for dx: one large allocation, not two
    sum_dzc, sum_dz = buf.sum(dims), dz.sum(dims)
    r = torch.mul(inv_s, inv_s).mul_(v)
    ku = torch.mul(u, -k)
    dx = torch.addcmul(_expand(ku, nd), dz, _expand(scale, nd), out=buf)
    dx.addcmul_(c, _expand(r, nd), value=-k)
    m2 = torch.addcmul(q0, d0, d0)  # mean_S(c^2)
    v.add_(sum_dzc * scale, alpha=1 / size).addcmul_(r, m2, value=-k)
    u.add_(ku).addcmul_(sum_dz, scale, value=1 / size).addcmul_(r, d0, value=-k)
    return dx, sum_dzc.mul_(inv_s), sum_dz


# ---------------------------------------------------------------------- batch of N > 1


def _variance_input(a: float | Tensor, msq: Tensor, d: Tensor | None) -> tuple[Tensor, float]:
    """``(b, gain)`` with ``gain * b = (1 - a) * (var_S + a * d**2)``, the variance input.

    Written with ``msq = mean_S((x - mu)**2) = var_S + d**2`` as
    ``(1 - a) * (msq - (1 - a) * d**2)``: ``msq`` comes from the centered input the
    output needs anyway, which saves a separate (and on CPU slow, Welford) variance
    pass. The subtraction loses at most a factor ``(2 - a) / a`` of ``msq``'s rounding
    (about 1 at the default ``a = 0.999``, at most 3 for ``a >= 1/2`` as in warm-up).
    ``d is None`` means no spatial dims: ``var_S = 0`` and ``msq = d**2``. A constant
    ``a`` leaves its factor as ``gain``, for the scan's kernel.
    """
    if isinstance(a, float):
        if d is None:
            return msq, (1 - a) * a
        return torch.addcmul(msq, d, d, value=-(1 - a)), 1 - a
    if d is None:
        return msq * ((1 - a) * a), 1.0
    return torch.mul(msq - (1 - a) * d * d, 1 - a), 1.0


def _scan_statistics(
    xc: Tensor, mu: Tensor, var: Tensor, a: float | Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Batch of N > 1: the forward recurrences as two linear scans; advances the state.

    Returns ``(centered, d, msq, inv_s)``: ``centered = x - mu_before`` ``(N, C, *S)``;
    ``(N, C)`` summaries ``d = mean_S(centered)``, ``msq = mean_S(centered**2)`` and the
    ``1 / sqrt(var_before + eps)`` each sample is normalized with. A constant decay's
    input weights ride in the scans' kernels (``gain``), not in passes over the input.
    """
    nd = xc.dim()
    cdt = xc.dtype
    dims = tuple(range(2, nd))
    size = xc[0, 0].numel()
    mean_s = _spatial_mean(xc, dims, size) if nd > 2 else xc
    # The mean is scanned as the shift from the entering mean (compensated): the
    # deviations are small where the values are not (offsets of 1e3, spread 1e-2), so
    # the scan's products round relative to the spread, and the sum rounds once.
    mu0 = _as(mu, cdt)
    dev = mean_s - mu0
    zero = torch.zeros_like(mu0)
    if isinstance(a, float):
        dev_b, dev_last = linear_scan(a, dev, zero, gain=1 - a)
    else:
        dev_b, dev_last = linear_scan(a, (1 - a) * dev, zero)
    mu_last = dev_last.add_(mu0)
    if nd > 2:
        centered = xc - _expand(mu0 + dev_b, nd)
        d = dev.sub_(dev_b)  # dev is a fresh summary here
        msq = _spatial_mean_square(centered, dims, size)
        var_in, gain = _variance_input(a, msq, d)
    else:
        centered = dev.sub_(dev_b)  # x - mu_before, without rounding mu_before
        d = centered
        msq = centered * centered
        var_in, gain = _variance_input(a, msq, None)
    var_b, var_last = linear_scan(a, var_in, _as(var, cdt), gain=gain)
    inv_s = var_b.add_(eps).rsqrt_()  # var_b is a fresh buffer (N > 1)
    mu.copy_(mu_last)
    var.copy_(var_last)
    return centered, d, msq, inv_s


def _scan_backward(
    dz: Tensor, saved: tuple[Tensor, ...], u: Tensor, v: Tensor, alpha_bkw: float, need_x: bool
) -> tuple[Tensor | None, Tensor, Tensor]:
    """``(dx, sum_N(dz y), sum_N(dz))`` ``(.., (N, C), (N, C))`` of a batch; advances ``u``, ``v``.

    ``v_n = (1 - k mean_S(y_n^2)) v_{n-1} + mean_S(dy_n y_n)`` and
    ``u_n = alpha_bkw u_{n-1} + mean_S(g_n) / s_n`` as two scans, with ``mean_S(y) = d / s``
    and ``mean_S(y^2) = msq / s^2`` from the forward's summaries.
    """
    centered, inv_s, scale, d, msq = saved
    k = 1.0 - alpha_bkw
    nd = centered.dim()
    cdt = inv_s.dtype
    if nd > 2:
        dims = tuple(range(2, nd))
        buf = dz * centered  # reused below for dx: one large allocation, not two
        sum_dzc, sum_dz = buf.sum(dims), dz.sum(dims)
        scale_s = scale * (1.0 / centered[0, 0].numel())  # means over S from sums
    else:
        buf = None
        sum_dzc, sum_dz, scale_s = dz * centered, dz, scale
    inv_s2 = inv_s * inv_s
    coef_v = torch.addcmul(inv_s2.new_ones(()), msq, inv_s2, value=-k)
    v_b, v_last = linear_scan(coef_v, sum_dzc * scale_s, _as(v, cdt))
    vs2 = inv_s2.mul_(v_b)  # v / s^2
    u_in = torch.mul(sum_dz, scale_s).addcmul_(vs2, d, value=-k)  # mean_S(g) / s
    u_b, u_last = linear_scan(alpha_bkw, u_in, _as(u, cdt))
    dx = None
    if need_x:  # dx = dz * scale - k (v / s^2) c - k u
        if buf is None:  # no spatial dims: that is u_in - k u (u_in is dead: reuse it)
            dx = u_in.add_(u_b, alpha=-k)
        else:
            dx = torch.addcmul(_expand(u_b * -k, nd), dz, _expand(scale, nd), out=buf)
            dx.addcmul_(centered, _expand(vs2, nd), value=-k)
    v.copy_(v_last)
    u.copy_(u_last)
    return dx, sum_dzc.mul_(inv_s), sum_dz


class OnlineNormFunction(torch.autograd.Function):
    """Training-mode ON with the affine transform fused in: ``apply(x, weight, bias, state)``.

    ``state`` is an :class:`OnlineNormState`. Forward advances ``mu``, ``var`` (and
    ``seen``) once; backward advances ``u``, ``v`` once, in stream order. The backward is
    ON's control-process gradient, not autograd's derivative of the forward; ``weight``
    and ``bias`` get exact gradients.

    A batch of one (streaming, the common case) normalizes with the state as it is and
    advances it by one step in place, in few operations (NumPy ones for plain ``(1, C)``
    CPU input, see :data:`NUMPY_STEP`). A larger batch runs the recurrences as scans
    over ``(N, C)`` summaries of the centered input ``c = x - mu_before``: its spatial
    mean ``d`` and mean square ``msq``, so ``mean_S(y) = d / s`` and
    ``mean_S(y**2) = msq / s**2`` need no extra pass.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        state: OnlineNormState,
    ) -> Tensor:
        n = x.shape[0]
        seen = state.seen
        a = (
            _forward_coefficient(state.alpha_fwd, n, seen, compute_dtype(x, state.mu))
            if state.warmup
            else state.alpha_fwd
        )
        if n == 1:
            assert isinstance(a, float)
            c, inv_s, scale, out = _normalize(x, state.mu, state.var, weight, bias, state.eps)
            if c.dim() > 2:
                ctx.mode = "spatial"
                ctx.saved = (c, inv_s, scale, *_step_spatial(c, state.mu, state.var, a))
            elif _use_numpy(c):
                ctx.mode = "numpy"
                _step_plain_np(c, state.mu, state.var, seen, a)
                seen = None  # counted
                ctx.saved = (c, inv_s, scale)
            else:
                ctx.mode = "plain"
                _step_plain(c, state.mu, state.var, a)
                ctx.saved = (c, inv_s, scale)
        else:
            ctx.mode = "scan"
            xc = _as(x, compute_dtype(x, state.mu))
            centered, d, msq, inv_s = _scan_statistics(xc, state.mu, state.var, a, state.eps)
            nd = x.dim()
            scale = inv_s if weight is None else inv_s * _as(weight, xc.dtype)
            if bias is None:
                out = centered * _expand(scale, nd)
            else:
                out = torch.addcmul(_expand(_as(bias, xc.dtype), nd), centered, _expand(scale, nd))
            ctx.saved = (centered, inv_s, scale, d, msq)
        if seen is not None:
            seen.add_(n)
        ctx.state = state
        ctx.dtypes = (x.dtype, None if weight is None else weight.dtype, None if bias is None else bias.dtype)
        return _as(out, x.dtype)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor):  # type: ignore[override]
        state: OnlineNormState = ctx.state
        saved = ctx.saved
        k = 1.0 - state.alpha_bkw
        dz = _as(grad_out, saved[1].dtype)
        mode = ctx.mode
        if mode == "numpy" and not torch.is_grad_enabled():
            dx, grad_w, grad_b = _step_plain_backward_np(dz, *saved, state.u, state.v, k)
        elif mode in ("numpy", "plain"):
            dx, grad_w, grad_b = _step_plain_backward(dz, *saved, state.u, state.v, k)
        elif mode == "spatial":
            dx, grad_w, grad_b = _step_spatial_backward(dz, saved, state.u, state.v, k)
        else:
            dx, grad_w, grad_b = _scan_backward(
                dz, saved, state.u, state.v, state.alpha_bkw, ctx.needs_input_grad[0]
            )
            grad_w, grad_b = grad_w.sum(0), grad_b.sum(0)
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        needs = ctx.needs_input_grad
        return (
            None if dx is None or not needs[0] else _as(dx, x_dtype),
            None if w_dtype is None or not needs[1] else _as(grad_w, w_dtype),
            None if b_dtype is None or not needs[2] else _as(grad_b, b_dtype),
            None,
        )


#: ``Function.apply`` minus its Python wrapper (argument binding, functorch checks)
_apply = super(torch.autograd.Function, OnlineNormFunction).apply


def apply_online_norm(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, state: OnlineNormState
) -> Tensor:
    """``OnlineNormFunction.apply(x, weight, bias, state)``, calling autograd's C++ entry directly.

    ``Function.apply``'s Python wrapper only matters under functorch transforms, which
    are checked here (they get the wrapper, and its error); at a batch of one the
    wrapper costs about as much as a tensor operation.
    """
    if torch._C._are_functorch_transforms_active():
        return OnlineNormFunction.apply(x, weight, bias, state)
    return _apply(x, weight, bias, state)


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
        state = OnlineNormState(mu, var, u, v, seen, seen is not None, alpha_fwd, alpha_bkw, eps)
        return apply_online_norm(x, weight, bias, state)
    return _as(_normalize(x, mu, var, weight, bias, eps)[3], x.dtype)


class LayerScalingFunction(torch.autograd.Function):
    """``z = h / sqrt(mean(h^2) + eps)`` per sample (or per group of channels), with its
    exact derivative.

    One autograd node instead of five (pow, mean, add, rsqrt, mul): with
    ``r = (mean(h^2) + eps)**-1/2`` the derivative is ``dh = r * (dz - z * mean(dz * z))``,
    the same function autograd differentiates, in two passes over the activations.
    Also returns ``mean(h^2)`` (no gradient), the layer's health signal.

    ``groups > 1`` splits the ``C`` channels into that many contiguous groups (the
    authors' ``group_size = C / groups``); every mean is then over one group's channels
    and spatial elements, so both formulas hold per group.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, h: Tensor, eps: float, groups: int = 1):  # type: ignore[override]
        hg = h if groups == 1 else h.reshape(h.shape[0], groups, -1)
        dims = tuple(range(1, hg.dim())) if groups == 1 else (2,)
        size = hg[0].numel() // groups
        # the RMS first, then its square: no overflow of the sum of squares in half precision
        mean_sq = torch.linalg.vector_norm(hg, 2, dims, keepdim=True).div_(size**0.5).square_()
        r = torch.rsqrt(mean_sq + eps)
        z = hg * r
        ctx.save_for_backward(z, r)
        ctx.groups = groups
        if groups == 1:
            ctx.mark_non_differentiable(mean_sq)
            return z, mean_sq
        mean_sq = mean_sq.view(h.shape[0], groups)
        ctx.mark_non_differentiable(mean_sq)
        return z.view(h.shape), mean_sq

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, dz: Tensor, _dmean_sq: Tensor):  # type: ignore[override]
        z, r = ctx.saved_tensors
        groups = ctx.groups
        shape = dz.shape
        if groups > 1:
            dz = dz.reshape(z.shape)
        dims = tuple(range(1, z.dim())) if groups == 1 else (2,)
        buf = dz * z  # reused for the result: one large allocation
        proj = buf.mean(dims, keepdim=True)
        dh = torch.addcmul(dz, z, proj, value=-1, out=buf)
        dh.mul_(r)
        return (dh if groups == 1 else dh.view(shape)), None, None


def ls_groups(num_features: int, group_size: int | None) -> int:
    """How many groups of ``group_size`` channels layer scaling divides ``num_features`` into.

    ``None`` (or the authors' ``-1``) is one group of all channels.
    """
    if group_size is None or group_size == -1:
        return 1
    if group_size < 1 or num_features % group_size:
        raise ValueError(
            f"group_size must be a positive divisor of the {num_features} channels (got {group_size})"
        )
    return num_features // group_size


def layer_scaling(h: Tensor, eps: float = 1e-5, group_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Per-sample ``h / sqrt(mean(h^2) + eps)``, mean over every non-batch element, or
    over each group of ``group_size`` contiguous channels (and their spatial elements).

    Returns ``(scaled, mean_sq)``: ``mean_sq`` is the mean square before scaling,
    ``(N, 1, ...)`` for one group and ``(N, groups)`` for several; its root is 1 when the
    normalizer's estimates are right (a health signal).
    """
    return LayerScalingFunction.apply(h, eps, ls_groups(h.shape[1], group_size))


def activation_clamp(h: Tensor, clamp_val: float = 5.0) -> Tensor:
    """``clamp(h, -clamp_val, clamp_val)``; gradient 0 where clamped (autograd's)."""
    return torch.clamp(h, -clamp_val, clamp_val)
