"""The optimizer update of the fast step: torch's own fused kernels, called directly.

``optimizer.step()`` costs tens of microseconds of Python around its one fused kernel
call per parameter group (hooks, profiler records, grouping tensors by device). The fast
step calls the same kernels with the same arguments and the same lazily created state,
so the update is bit for bit the one ``optimizer.step()`` would make, and the optimizer's
``state_dict`` (hence snapshots) is the same as on the eager path.
"""

from __future__ import annotations

import math
from typing import Any

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
_SLACK = 1.01  # covers float32 rounding of the bounded quantities


class UpdateGuard:
    """Undo an optimizer update whose weights came out non-finite, byte for byte.

    A finite gradient can still give non-finite weights: a weight decay of ``1e308`` or
    a huge learning rate overflows inside the update. Copying every weight aside before
    each update costs as much as a tenth of a fast step, so the guard first bounds the
    update: it keeps ``M >= max |w|, |momentum|, |exp_avg|`` and ``V >= max exp_avg_sq``
    and advances them by each update's worst case from the gradient norm and the
    groups' current hyper-parameters (SGD: ``B = m M + G + wd M``, ``M' = max(B, M + lr B)``;
    Adam: ``e = G + wd M``, ``M' = max(M, e) (1 + lr / ((1 - beta1) eps))``,
    ``V' = beta2 V + (1 - beta2) e^2``). While the bounds stay far below float32's
    range (:data:`_LIMIT`) the update cannot overflow and nothing is copied or checked;
    otherwise (and on a first step, after a load) :meth:`prepare` copies the weights and
    optimizer state aside, :meth:`finite` checks the result and measures the bounds
    exactly again, and :meth:`restore` puts everything back, deleting the state the
    update created lazily (a first step's momentum buffers, Adam's moments), so
    ``state_dict`` is the one before the update. Weights changed outside the learner's
    steps need :meth:`reset`. Memory: one more copy of the weights and optimizer state.
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
        self._first: list[Tensor] = []  # weights, momentum buffers, first moments
        self._second: list[Tensor] = []  # Adam's second moments
        self._keys: dict[int, set[str]] = {}  # id(param) -> state keys before the update
        self._bound: tuple[float, float] | None = None  # (M, V), or unknown
        self._next: tuple[float, float] | None = None
        self._saved = False

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
        self._first, self._second = self._moments()
        self._bound = None

    def _advance(self, grad_norm: float) -> tuple[float, float] | None:
        """The bounds after an update with this gradient norm, or ``None`` if it might overflow."""
        if self._bound is None:
            return None
        m_bound, v_bound = self._bound
        g = grad_norm * _SLACK
        new_m, new_v = m_bound, v_bound
        for group in self.optimizer.param_groups:
            lr, wd = float(group["lr"]), float(group["weight_decay"])
            if self._adam:
                beta1, beta2 = group["betas"]
                eps = float(group["eps"])
                e = g + wd * m_bound
                if not (eps > 0 and e < _E_LIMIT):
                    return None
                first = max(m_bound, e)
                new_m = max(new_m, first * (1 + lr / ((1 - beta1) * eps)))
                new_v = max(new_v, beta2 * v_bound + (1 - beta2) * e * e)
            else:
                b = group["momentum"] * m_bound + g + wd * m_bound
                new_m = max(new_m, b, m_bound + lr * b)
        new_m, new_v = new_m * _SLACK, new_v * _SLACK
        if not (new_m < _LIMIT and new_v < _V_LIMIT):  # also false for inf and nan
            return None
        return new_m, new_v

    def prepare(self, grad_norm: float) -> bool:
        """Call right before the update. Returns whether it copied the weights and state
        aside (the bounds could not rule out an overflow): then :meth:`finite` checks."""
        state = self.optimizer.state
        if state is not self._state_ref or len(state) != self._state_len:
            self._gather()
        self._next = self._advance(grad_norm)
        self._saved = self._next is None
        if self._saved:
            with torch.no_grad():
                torch._foreach_copy_(self._backup, self._live)
        return self._saved

    def save(self) -> None:
        """:meth:`prepare` that always copies (for callers without a gradient norm)."""
        self.prepare(math.inf)

    def _moments(self) -> tuple[list[Tensor], list[Tensor]]:
        """The weights with the momentum buffers and first moments, and the second moments."""
        state = self.optimizer.state
        entries = [
            (k, t) for p in self.params if p in state for k, t in state[p].items() if isinstance(t, Tensor)
        ]
        first = [*self.params, *(t for k, t in entries if k in ("momentum_buffer", "exp_avg"))]
        return first, [t for k, t in entries if k == "exp_avg_sq"]

    def _measure(self, firsts: list[Tensor], seconds: list[Tensor]) -> tuple[float, float]:
        """``(max |first|, max second)`` exactly: inf or nan if any is not finite."""
        if self._cpu:
            with np.errstate(all="ignore"):
                first = [float(np.max(np.abs(t.detach().numpy()))) for t in firsts if t.numel()]
                second = [float(np.max(t.detach().numpy())) for t in seconds if t.numel()]
        else:
            first = [float(torch.stack(torch._foreach_norm(firsts, math.inf)).max())] if firsts else []
            second = [float(torch.stack([t.max() for t in seconds]).max())] if seconds else []
        bad = [x for x in (*first, *second) if not math.isfinite(x)]
        if bad:
            return bad[0], bad[0]
        return max(first, default=0.0), max(second, default=0.0)

    def finite(self) -> bool:
        """Whether every weight is finite after the update (certain without a copy)."""
        if not self._saved:
            self._bound = self._next
            return True
        state = self.optimizer.state
        changed = state is not self._state_ref or len(state) != self._state_len
        # a first step created state: measure it too (the saved lists stay for restore)
        first, second = self._moments() if changed else (self._first, self._second)
        m_bound, v_bound = self._measure(first, second)
        ok = math.isfinite(m_bound) and math.isfinite(v_bound)
        if ok and changed:
            self._gather()
        self._bound = (m_bound, v_bound) if ok else None
        return ok

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
