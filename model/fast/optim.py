"""The optimizer update of the fast step: torch's own fused kernels, called directly.

``optimizer.step()`` costs tens of microseconds of Python around its one fused kernel
call per parameter group (hooks, profiler records, grouping tensors by device). The fast
step calls the same kernels with the same arguments and the same lazily created state,
so the update is bit for bit the one ``optimizer.step()`` would make, and the optimizer's
``state_dict`` (hence snapshots) is the same as on the eager path.
"""

from __future__ import annotations

from typing import Any

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
        if self._state_ref is not self.optimizer.state or len(self._lists) != len(groups):
            self._lists = []
            self._state_ref = self.optimizer.state
        for i, (group, group_grads) in enumerate(zip(groups, grads, strict=True)):
            params: list[Tensor] = group["params"]
            if self._adam:
                self._adam_group(i, group, params, group_grads)
            else:
                self._sgd_group(i, group, params, group_grads)

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
