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


class UpdateGuard:
    """Undo an optimizer update whose weights came out non-finite, byte for byte.

    A finite gradient can still give non-finite weights: ``weight_decay=1e308`` or a huge
    learning rate overflows inside the update. Before each update :meth:`save` copies the
    weights and the optimizer's state tensors aside (one ``_foreach_copy_``, into buffers
    made once); after it, :meth:`finite` checks the weights and :meth:`restore` puts
    everything back, deleting the state the update created lazily (a first step's
    momentum buffers, Adam's moments), so ``state_dict`` is the one before the update.
    Memory: one more copy of the weights and of the optimizer state.
    """

    def __init__(self, params: list[Tensor], optimizer: torch.optim.Optimizer) -> None:
        self.params = params
        self.optimizer = optimizer
        self._cpu = all(p.device.type == "cpu" for p in params)
        self._views = [p.detach().numpy().reshape(-1) for p in params] if self._cpu else []
        self._state_ref: Any = None
        self._state_len = -1
        self._live: list[Tensor] = []
        self._backup: list[Tensor] = []
        self._keys: dict[int, set[str]] = {}  # id(param) -> state keys before the update

    def _gather(self) -> None:
        """The optimizer's state tensors and key sets, gathered again after the state's
        structure changed (a first step, a load)."""
        state = self.optimizer.state
        self._state_ref, self._state_len = state, len(state)
        self._keys = {id(p): set(state[p]) for p in self.params if p in state}
        tensors = [t for p in self.params if p in state for t in state[p].values() if isinstance(t, Tensor)]
        self._live = [*self.params, *tensors]
        self._backup = [torch.empty_like(t) for t in self._live]

    def save(self) -> None:
        """Copy the weights and optimizer state aside; call right before the update."""
        state = self.optimizer.state
        if state is not self._state_ref or len(state) != self._state_len:
            self._gather()
        with torch.no_grad():
            torch._foreach_copy_(self._backup, self._live)

    def finite(self) -> bool:
        """Whether every weight is finite. A sum of squares is one cheap pass, but it can
        overflow for finite weights above ~1e19: only then are the weights checked exactly."""
        with np.errstate(all="ignore"):
            if self._cpu:
                if math.isfinite(float(sum(float(np.dot(v, v)) for v in self._views))):
                    return True
                return all(bool(np.isfinite(v).all()) for v in self._views)
        if bool(torch.stack(torch._foreach_norm(self.params)).isfinite().all()):
            return True
        return all(bool(torch.isfinite(p).all()) for p in self.params)

    def restore(self) -> None:
        """Put back what :meth:`save` copied and drop the state the update created."""
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
