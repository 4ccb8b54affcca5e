"""The optimizer update of the fast step: torch's own fused kernels, called directly.

``optimizer.step()`` costs tens of microseconds of Python around its one fused kernel
call per parameter group (hooks, profiler records, grouping tensors by device). The fast
step calls the same kernels with the same arguments and the same lazily created state,
so the update is bit for bit the one ``optimizer.step()`` would make, and the optimizer's
``state_dict`` (hence snapshots) is the same as on the eager path.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor


class FusedUpdate:
    """One step of a fused ``SGD`` or ``Adam`` over every parameter, grads given."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        if not isinstance(optimizer, torch.optim.SGD | torch.optim.Adam):
            raise TypeError(f"unsupported optimizer {type(optimizer).__name__}")
        for group in optimizer.param_groups:
            if not group.get("fused"):
                raise ValueError("the fast update mirrors fused optimizers only")
            if group.get("amsgrad") or group.get("maximize") or group.get("nesterov"):
                raise ValueError("amsgrad, maximize and nesterov are not mirrored")
            if group.get("dampening", 0) != 0:
                raise ValueError("dampening is not mirrored")
            if torch.is_tensor(group["lr"]):
                raise ValueError("a tensor learning rate is not mirrored")
            if group.get("decoupled_weight_decay"):
                raise ValueError("decoupled weight decay (AdamW) is not mirrored")
        self.optimizer = optimizer
        self._adam = isinstance(optimizer, torch.optim.Adam)
        # Per group, the state tensors the kernels take, gathered once: valid while the
        # optimizer's state is the same object (``load_state_dict`` replaces it).
        self._state_ref: Any = None
        self._lists: list[list[list[Tensor]]] = []
        self._state_len = -1

    def _adam_state(self, p: Tensor) -> dict[str, Any]:
        """The state ``Adam._init_group`` creates lazily for a fused group."""
        state = self.optimizer.state[p]
        if len(state) == 0:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def step(self, grads: list[list[Tensor]]) -> None:
        """Update every parameter; ``grads[g][i]`` is the gradient of group ``g``'s ``i``-th."""
        groups = self.optimizer.param_groups
        state = self.optimizer.state
        # gathered again after a load replaced the state, or a rollback deleted entries
        if state is not self._state_ref or len(self._lists) != len(groups) or len(state) != self._state_len:
            self._lists = []
            self._state_ref = state
        for i, (group, group_grads) in enumerate(zip(groups, grads, strict=True)):
            params: list[Tensor] = group["params"]
            if self._adam:
                self._adam_group(i, group, params, group_grads)
            else:
                self._sgd_group(i, group, params, group_grads)
        self._state_len = len(state)

    def _adam_group(self, i: int, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        if i == len(self._lists):
            states = [self._adam_state(p) for p in params]
            self._lists.append(
                [
                    [s["step"] for s in states],
                    [s["exp_avg"] for s in states],
                    [s["exp_avg_sq"] for s in states],
                ]
            )
        steps, exp_avgs, exp_avg_sqs = self._lists[i]
        beta1, beta2 = group["betas"]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            steps,
            amsgrad=False,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
        )

    def _sgd_group(self, i: int, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        momentum = group["momentum"]
        state = self.optimizer.state
        buffers: list[Tensor] = []
        first = False
        if momentum != 0 and i < len(self._lists):
            buffers = self._lists[i][0]
        elif momentum != 0:
            found = [state[p].get("momentum_buffer") for p in params]
            first = all(b is None for b in found)
            buffers = [torch.empty_like(g) for g in grads] if first else found  # type: ignore[misc]
        torch._fused_sgd_(
            params,
            grads,
            buffers,
            weight_decay=group["weight_decay"],
            momentum=momentum,
            lr=group["lr"],
            dampening=0.0,
            nesterov=False,
            maximize=False,
            is_first_step=first,
        )
        if first:
            for p, buf in zip(params, buffers, strict=True):
                state[p]["momentum_buffer"] = buf
        if i == len(self._lists):
            self._lists.append([buffers])


#: Bounds under which an update cannot overflow float32 (max 3.4e38): weights and first
#: moments, second moments, and an effective gradient whose square must stay finite.
_LIMIT, _V_LIMIT, _E_LIMIT = 1e30, 1e36, 1e17
_SLACK = 1.01  # covers float32 rounding of a gradient norm and of one Adam step's quotient
#: Relative rounding of one float32 multiply-add chain (a few ulps, 2**-24 each), applied
#: per step to quantities that accumulate: small enough not to compound into a re-measure.
_ROUND = 1e-6
#: Absolute float32 underflow per element and step, as a square root: ``e * e`` and
#: ``beta2 * v`` lose at most a few subnormals (2**-149 each), so ``sqrt(v)`` at most 1e-22.
_TINY = 1e-20
#: Where ``sqrt(exp_avg_sq)`` is below this, a measure bounds ``|exp_avg|`` itself (``U``),
#: not its ratio to it (``R``): an element whose tiny ``e^2`` underflowed has ``v = 0``.
_SPLIT = 1e-15
#: Absolute float32 rounding below the normal range (2**-150 per operation), added to bounds.
_ABS = 1e-38


class _Bound(NamedTuple):
    """Upper bounds on the weights and optimizer state, advanced update by update."""

    w: float  #: max |weight| (SGD: also max |momentum buffer|)
    a: float  #: max |momentum buffer| or |exp_avg|
    v: float  #: max exp_avg_sq
    r: float  #: max |exp_avg| / sqrt(exp_avg_sq) over elements, up to ``u`` (inf: unknown)
    u: float  #: absolute excess of |exp_avg| over ``r sqrt(exp_avg_sq)`` from underflow
    t: int  #: the smallest Adam step count (0: unknown, the next update is checked)


class _Parts(NamedTuple):
    """The tensors the bounds are measured on."""

    weights: list[Tensor]
    firsts: list[Tensor]  # momentum buffers, first moments
    seconds: list[Tensor]  # second moments
    pairs: list[tuple[Tensor, Tensor]]  # (exp_avg, exp_avg_sq) of one parameter
    steps: list[Tensor]


@functools.lru_cache(maxsize=256)
def _adam_coefficients(beta1: float, beta2: float, eps: float) -> tuple[float, ...] | None:
    """The kernel's float32 coefficients ``(b1, c1, b2, c2, eps)``, or ``None`` outside
    the range the bound covers."""
    if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
        return None
    b1, c1, b2, c2, eps32 = (float(np.float32(x)) for x in (beta1, 1.0 - beta1, beta2, 1.0 - beta2, eps))
    if not (0.0 < eps32 < math.inf and c2 > 0.0):
        return None
    return b1, c1, b2, c2, eps32


@functools.lru_cache(maxsize=256)
def _bias_factors(beta1: float, beta2: float, t0: int) -> tuple[float, float]:
    """``(H, B)``: upper bounds, over every step ``t >= t0``, on ``sqrt(1 - beta2**t) /
    (1 - beta1**t)`` (the bias corrections' ratio in the step) and on ``1 / (1 - beta1**t)``.

    ``1 / (1 - beta1**t)`` decreases in ``t``, so ``B`` is its value at ``t0``; the ratio
    is evaluated exactly up to the step where ``beta1**t <= 1e-3`` (at most 100,000
    steps on), and beyond it bounded by ``1 / (1 - beta1**t)`` there.
    """
    if beta1 == 0.0:
        return 1.0, 1.0
    log1 = math.log(beta1)
    end = min(max(t0, math.ceil(math.log(1e-3) / log1)), t0 + 100_000)
    t = np.arange(t0, end + 1, dtype=np.float64)
    num = np.ones_like(t) if beta2 == 0.0 else np.sqrt(-np.expm1(t * math.log(beta2)))
    ratio = float(np.max(num / -np.expm1(t * log1)))
    tail = 1.0 / -math.expm1((end + 1) * log1)
    return max(ratio, tail), 1.0 / -math.expm1(t0 * log1)


class UpdateGuard:
    """Undo an optimizer update whose weights came out non-finite, byte for byte.

    A finite gradient can still give non-finite weights: a weight decay of ``1e308`` or
    a huge learning rate overflows inside the update. Copying every weight aside before
    each update costs as much as a tenth of a fast step, so the guard first bounds the
    update from the gradient norm ``G`` (>= every element's magnitude) and the groups'
    current hyper-parameters. While the bounds stay far below float32's range
    (:data:`_LIMIT`) the update cannot overflow and nothing is copied or checked;
    otherwise (and on a first step, after a load) :meth:`prepare` copies the weights and
    optimizer state aside, :meth:`finite` checks the result and measures the bounds
    exactly again, and :meth:`restore` puts everything back, deleting the state the
    update created lazily (a first step's momentum buffers, Adam's moments), so
    ``state_dict`` is the one before the update. Weights changed outside the learner's
    steps need :meth:`reset`. Memory: one more copy of the weights and optimizer state.

    SGD keeps ``M >= max |w|, |momentum|``: ``B = m M + G + wd M``, ``M' = max(B, M + lr B)``.

    Adam: torch's kernels compute, per element, with step count ``t``, ``b1, c1 = beta1,
    1 - beta1`` and ``b2, c2 = beta2, 1 - beta2`` (as float32)::

        e = g + wd w        m' = b1 m + c1 e        v' = b2 v + c2 e^2
        w' = w - lr / (1 - beta1^t) * m' / (sqrt(v') / sqrt(1 - beta2^t) + eps)

    The guard keeps ``W, A, V >= max |w|, |m|, v`` and ``R, U`` with ``|m| <= R sqrt(v) + U``
    in every element. The step does not grow with the gradient, as ``m`` averages the ``e``
    whose squares ``v`` averages: from ``|m| <= R sqrt(v)``, Cauchy-Schwarz on ``b1 |m| +
    c1 |e| <= (b1 R / sqrt(b2)) sqrt(b2 v) + (c1 / sqrt(c2)) sqrt(c2 e^2)`` gives ``|m'| <=
    R' sqrt(v')`` with ``R'^2 = b1^2 R^2 / b2 + c1^2 / c2``, whatever ``e`` is. A first step
    measures ``R = c1 / sqrt(c2)``; ``R`` tends to ``c1 / sqrt(c2 (1 - b1^2 / b2))`` (7.3 for
    the default betas) where ``b1^2 < b2``, and grows geometrically where not. So ``|w' - w|
    <= lr (R' H + U' B / eps)``, with ``H >= sqrt(1 - beta2^t) / (1 - beta1^t)`` and ``B >=
    1 / (1 - beta1^t)`` over every step ``t`` since the measure (:func:`_bias_factors`; ``H``
    is about 1 for the default betas), and also ``<= lr B A' / eps``, which takes over
    where ``R`` is large. With ``E = G + wd W``::

        A' = b1 A + c1 E     V' = b2 V + c2 E^2     S = min(R' H + U' B / eps, A' B / eps)
        W' = W + lr S        (decoupled decay, AdamW: E = G and W' = |1 - lr wd| W + lr S)

    Slack: ``G`` and ``S`` times :data:`_SLACK`; the bounds that accumulate grow by
    :data:`_ROUND` (float32 rounding) and :data:`_ABS` a step; ``U`` grows by :data:`_TINY`
    a step (a tiny ``e^2`` underflows to 0 while ``m`` keeps ``c1 e``), and a measure puts
    elements with ``sqrt(v) < _SPLIT`` in ``U``, not in ``R``. The kernel's float32 step size
    and its product with ``m`` must stay finite too. ``amsgrad``, non-integer step counts
    and betas outside ``[0, 1)`` are not bounded: such updates are always copied and checked.
    """

    def __init__(self, params: list[Tensor], optimizer: torch.optim.Optimizer) -> None:
        self.params = params
        self.optimizer = optimizer
        self._adam = isinstance(optimizer, torch.optim.Adam)
        self._cpu = all(p.device.type == "cpu" for p in params)
        self._state_ref: Any = None
        self._state_len = -1
        self._live: list[Tensor] = []
        self._backup: list[Tensor] = []
        self._parts = _Parts([], [], [], [], [])
        self._keys: dict[int, set[str]] = {}  # id(param) -> state keys before the update
        self._bound: _Bound | None = None  # unknown until measured
        self._next: _Bound | None = None
        self._saved = False
        #: updates :meth:`prepare` saw, and those it copied the weights and state aside for
        #: (the bounds could not rule out an overflow): the guard's cost, for tests and benchmarks
        self.updates: int = 0
        self.copies: int = 0

    def reset(self) -> None:
        """Forget the bounds (the weights or state were replaced): the next update is checked."""
        self._bound = None
        self._state_ref = None

    def _gather(self) -> None:
        """The optimizer's state tensors and key sets, gathered again after the state's
        structure changed (a first step, a load)."""
        state = self.optimizer.state
        self._state_ref, self._state_len = state, len(state)
        self._keys = {id(p): set(state[p]) for p in self.params if p in state}
        entries = [
            (k, t) for p in self.params if p in state for k, t in state[p].items() if isinstance(t, Tensor)
        ]
        self._live = [*self.params, *(t for _, t in entries)]
        self._backup = [torch.empty_like(t) for t in self._live]
        self._parts = self._collect()
        self._bound = None

    def _advance(self, grad_norm: float) -> _Bound | None:
        """The bounds after an update with this gradient norm, or ``None`` if it might overflow."""
        if self._bound is None:
            return None
        g = grad_norm * _SLACK
        bound = self._advance_adam(self._bound, g) if self._adam else self._advance_sgd(self._bound, g)
        if bound is None or not (bound.w < _LIMIT and bound.a < _LIMIT and bound.v < _V_LIMIT):
            return None  # also for inf and nan
        return bound

    def _advance_sgd(self, bound: _Bound, g: float) -> _Bound | None:
        m_bound = max(bound.w, bound.a)
        new_m = m_bound
        for group in self.optimizer.param_groups:
            lr, wd = abs(float(group["lr"])), abs(float(group["weight_decay"]))
            if not (lr < _LIMIT and wd < _LIMIT):  # their float32 casts stay finite
                return None
            b = group["momentum"] * m_bound + g + wd * m_bound
            m_g = max(b, m_bound + lr * b)
            if not m_g < _LIMIT:  # checked before max(), which would drop a nan
                return None
            new_m = max(new_m, m_g)
        new_m *= _SLACK
        return _Bound(new_m, new_m, 0.0, math.inf, 0.0, 0)

    def _advance_adam(self, bound: _Bound, g: float) -> _Bound | None:
        """One Adam update's bounds, the derivation in the class docstring."""
        w, a, v, r, u, t0 = bound
        if t0 < 1:
            return None
        new_w, new_a, new_v, new_r, new_u = w, a, v, r, u
        for group in self.optimizer.param_groups:
            if group.get("amsgrad"):
                return None
            beta1, beta2 = (float(b) for b in group["betas"])
            coefficients = _adam_coefficients(beta1, beta2, float(group["eps"]))
            if coefficients is None:
                return None
            b1, c1, b2, c2, eps = coefficients
            lr, wd = abs(float(group["lr"])), abs(float(group["weight_decay"]))
            if not (lr < _LIMIT and wd < _LIMIT):  # their float32 casts stay finite
                return None
            h, inv_bc1 = _bias_factors(beta1, beta2, t0)
            decoupled = bool(group.get("decoupled_weight_decay"))
            e = (g if decoupled else g + wd * w) * (1 + _ROUND)
            if not e < _E_LIMIT:
                return None
            a_g = b1 * a + c1 * e + _ROUND * (a + e) + _ABS
            v_g = b2 * v + c2 * e * e + _ROUND * (v + e * e) + _ABS
            if b2 > 0.0:
                x = b1 * r  # nan for b1 = 0, r = inf: then m' = c1 e, with no history
                r_g = math.sqrt((x * x / b2 if x > 0 else 0.0) + c1 * c1 / c2)
                r_g = (r_g + _ROUND * (r / math.sqrt(b2) + 1 / math.sqrt(c2))) * (1 + _ROUND)
            else:  # v' = e^2 forgets what m remembers
                r_g = math.inf
            u_g = (b1 + _ROUND) * u * (1 + _ROUND) + (r_g + 1) * _TINY
            s = min(r_g * h + u_g * inv_bc1 / eps, a_g * inv_bc1 / eps) * _SLACK
            step_size = lr * inv_bc1
            if not (step_size < _LIMIT and step_size * a_g < _V_LIMIT):  # (step_size * m) / denom
                return None
            decay = abs(1 - lr * wd) if decoupled else 1.0
            w_g = (decay * w + lr * s) * (1 + _ROUND) + _ABS
            # checked before max(), which would drop a nan; r and u may be inf, not nan
            if not (w_g < _LIMIT and a_g < _LIMIT and v_g < _V_LIMIT) or math.isnan(r_g + u_g):
                return None
            new_w, new_a, new_v = max(new_w, w_g), max(new_a, a_g), max(new_v, v_g)
            new_r, new_u = max(new_r, r_g), max(new_u, u_g)
        return _Bound(new_w, new_a, new_v, new_r, new_u, t0)

    def prepare(self, grad_norm: float) -> bool:
        """Call right before the update. Returns whether it copied the weights and state
        aside (the bounds could not rule out an overflow): then :meth:`finite` checks."""
        state = self.optimizer.state
        if state is not self._state_ref or len(state) != self._state_len:
            self._gather()
        self._next = self._advance(grad_norm)
        self._saved = self._next is None
        self.updates += 1
        if self._saved:
            self.copies += 1
            with torch.no_grad():
                torch._foreach_copy_(self._backup, self._live)
        return self._saved

    def save(self) -> None:
        """:meth:`prepare` that always copies (for callers without a gradient norm)."""
        self.prepare(math.inf)

    def _collect(self) -> _Parts:
        """The weights, momentum buffers and moments, and step counts the bounds cover."""
        state = self.optimizer.state
        parts = _Parts(list(self.params), [], [], [], [])
        for p in self.params:
            s = state.get(p, {})  # a defaultdict: no entry is created
            first = s.get("momentum_buffer", s.get("exp_avg"))
            if isinstance(first, Tensor):
                parts.firsts.append(first)
            second = s.get("exp_avg_sq")
            if isinstance(second, Tensor):
                parts.seconds.append(second)
                if isinstance(first, Tensor):
                    parts.pairs.append((first, second))
            if isinstance(s.get("step"), Tensor):
                parts.steps.append(s["step"])
        return parts

    def _measure(self, parts: _Parts) -> _Bound | None:
        """The bounds exactly (``R`` and ``U`` in float64), or ``None`` if any value is not finite."""
        if self._cpu:
            with np.errstate(all="ignore"):
                w = [float(np.max(np.abs(t.detach().numpy()))) for t in parts.weights if t.numel()]
                a = [float(np.max(np.abs(t.detach().numpy()))) for t in parts.firsts if t.numel()]
                v = [float(np.max(t.detach().numpy())) for t in parts.seconds if t.numel()]
                low = [float(np.min(t.detach().numpy())) for t in parts.seconds if t.numel()]
                split = [_split_ratio(m.detach().numpy(), s.detach().numpy()) for m, s in parts.pairs]
            r, u = [x for x, _ in split], [y for _, y in split]
            steps = [float(s) for s in parts.steps]
        else:
            w, a = _device_max(parts.weights, absolute=True), _device_max(parts.firsts, absolute=True)
            v = _device_max(parts.seconds, absolute=False)
            low = [-x for x in _device_max([-t for t in parts.seconds], absolute=False)]
            roots = [(m.detach().double().abs(), s.detach().double().sqrt()) for m, s in parts.pairs]
            r = _device_max([torch.where(q >= _SPLIT, m / q.clamp_min(_SPLIT), 0.0) for m, q in roots], False)
            u = _device_max([torch.where(q >= _SPLIT, 0.0, m) for m, q in roots], absolute=False)
            steps = (
                torch.stack([s.detach().reshape(()).double() for s in parts.steps]).tolist()
                if parts.steps
                else []
            )
        values = (max(w, default=0.0), max(a, default=0.0), max(v, default=0.0))
        # a negative second moment (whose square root made the weights nan) fails too
        if not all(math.isfinite(x) for x in (*w, *a, *v)) or min(low, default=0.0) < 0:
            return None
        ratio, excess = max(r, default=0.0) * (1 + _ROUND), max(u, default=0.0) * (1 + _ROUND)
        # the kernels read the step as an integer: only whole, positive counts are bounded
        # (a smaller t0 only loosens the bound: huge loaded counts are capped)
        whole = steps and all(s >= 1 and float(s).is_integer() for s in steps)
        t0 = int(min(*steps, 2.0**40)) if whole else 0
        if not self._adam:
            m_bound = max(values[0], values[1])
            return _Bound(m_bound, m_bound, 0.0, math.inf, 0.0, 0)
        return _Bound(*values, ratio, excess, t0)

    def finite(self) -> bool:
        """Whether every weight is finite after the update (certain without a copy)."""
        if not self._saved:
            self._bound = self._next
            return True
        state = self.optimizer.state
        changed = state is not self._state_ref or len(state) != self._state_len
        # a first step created state: measure it too (the saved lists stay for restore)
        bound = self._measure(self._collect() if changed else self._parts)
        if bound is not None and changed:
            self._gather()
        self._bound = bound
        return bound is not None

    def restore(self) -> None:
        """Put back what :meth:`prepare` copied and drop the state the update created."""
        assert self._saved, "restore needs a prepare that copied"
        state = self.optimizer.state
        for p in self.params:
            if p not in state:
                continue
            before = self._keys.get(id(p))
            if before is None:
                del state[p]
                continue
            for key in [k for k in state[p] if k not in before]:
                del state[p][key]
        with torch.no_grad():
            torch._foreach_copy_(self._live, self._backup)
        self._gather()


def _split_ratio(m: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    """``(R, U)`` with ``|m| <= R sqrt(v) + U`` everywhere, in float64: ``R`` the largest
    ratio where ``sqrt(v) >= _SPLIT``, ``U`` the largest ``|m|`` where it is smaller (an
    underflowed ``v``: a ratio there would be huge, the step it allows is not)."""
    if not m.size:
        return 0.0, 0.0
    num, root = np.abs(m).astype(np.float64), np.sqrt(v.astype(np.float64))
    big = root >= _SPLIT
    ratio = np.where(big, num / np.maximum(root, _SPLIT), 0.0)
    return float(np.max(ratio)), float(np.max(np.where(big, 0.0, num)))


def _device_max(tensors: list[Tensor], absolute: bool) -> list[float]:
    """``[max (|t|)]`` over the non-empty tensors in one device sync, or ``[]``."""
    tensors = [t.detach() for t in tensors if t.numel()]
    if not tensors:
        return []
    if absolute:
        return [float(torch.stack(torch._foreach_norm(tensors, math.inf)).max())]
    return [float(torch.stack([t.max() for t in tensors]).max())]
