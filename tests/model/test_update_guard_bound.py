"""The update guard's Adam bound: it really bounds every weight and moment, however
adversarial the gradients, and it is tight enough that the default spec's steps skip the
copy (the guard used to copy and check about one Adam step in five)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from model.fast.optim import FusedUpdate, UpdateGuard
from model.learner import NonFiniteStepError, OnlineLearner

SHAPES = ((7, 5), (5,), (3, 4), (1,))
GradFn = Callable[[int, np.random.Generator, list[tuple[int, ...]]], list[np.ndarray]]


def _random(step: int, rng: np.random.Generator, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Each tensor's own scale, from 1e-30 (its square underflows float32) to 1e6."""
    return [rng.normal(size=s) * 10 ** rng.uniform(-30, 6) for s in shapes]


def _tiny_then_huge(step: int, rng: np.random.Generator, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Long runs of subnormal-squared gradients, then bursts of huge ones, some elements zero."""
    scale = 1e-25 if (step // 40) % 2 == 0 else 1e7
    return [rng.normal(size=s) * scale * (rng.random(size=s) < 0.7) for s in shapes]


def _sign_flips(step: int, rng: np.random.Generator, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """A constant huge magnitude whose sign flips every step (and per element at random)."""
    return [np.full(s, 1e5 * (-1) ** step) * np.where(rng.random(size=s) < 0.1, -1, 1) for s in shapes]


def _one_direction(step: int, rng: np.random.Generator, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """The same sign forever after a long quiet start: Adam's largest steps, ratio at its limit."""
    return [np.full(s, 1e-12 if step < 30 else 3.0) for s in shapes]


GRADS: dict[str, GradFn] = {
    "random": _random,
    "tiny-then-huge": _tiny_then_huge,
    "sign-flips": _sign_flips,
    "one-direction": _one_direction,
}
#: (lr of the two groups, weight decay, betas, eps, other Adam options)
HYPER: dict[str, tuple[tuple[float, float], float, tuple[float, float], float, dict[str, Any]]] = {
    "default": ((0.003, 0.015), 0.0, (0.9, 0.999), 1e-8, {}),
    "spec-max-lr": ((10.0, 1000.0), 0.0, (0.9, 0.999), 1e-8, {}),  # lr <= 10, skip scale <= 100
    "huge-decay": ((0.003, 0.015), 1e6, (0.9, 0.999), 1e-8, {}),
    "spec-max-decay": ((10.0, 1000.0), 1.0, (0.9, 0.999), 1e-8, {}),
    "no-momentum": ((0.01, 0.05), 0.01, (0.0, 0.99), 1e-8, {}),
    "beta1-sq-above-beta2": ((0.01, 0.05), 0.0, (0.99, 0.9), 1e-8, {}),  # R grows: eps bound
    "no-second-moment-memory": ((0.01, 0.05), 0.0, (0.5, 0.0), 1e-8, {}),
    "slow-betas": ((0.01, 0.05), 0.0, (0.999, 0.9999), 1e-12, {}),
    "large-eps": ((0.01, 0.05), 0.1, (0.9, 0.999), 1.0, {}),
    "maximize": ((0.003, 0.015), 0.0, (0.9, 0.999), 1e-8, {"maximize": True}),
    "adamw": ((0.003, 0.015), 0.1, (0.9, 0.999), 1e-8, {"decoupled_weight_decay": True}),
    "adamw-strong-decay": ((0.5, 5.0), 0.3, (0.9, 0.999), 1e-8, {"decoupled_weight_decay": True}),
    # |1 - lr wd| = 14: the weights grow 14x a step until they overflow, and are rolled back
    "diverging-adamw": ((0.5, 5.0), 3.0, (0.9, 0.999), 1e-8, {"decoupled_weight_decay": True}),
}


def _true_values(params: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> tuple[float, ...]:
    """``(max |w|, max |exp_avg|, max exp_avg_sq)``, measured."""
    w = max(float(p.detach().abs().max()) for p in params)
    states = [optimizer.state[p] for p in params]
    a = max(float(s["exp_avg"].abs().max()) for s in states)
    v = max(float(s["exp_avg_sq"].max()) for s in states)
    return w, a, v


def _ratio_excess(guard: UpdateGuard, params: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> float:
    """``max(|m| - (R sqrt(v) + U))``: positive where the ratio invariant would not hold."""
    bound = guard._bound
    assert bound is not None
    excess = -math.inf
    for p in params:
        m = optimizer.state[p]["exp_avg"].double().abs()
        v = optimizer.state[p]["exp_avg_sq"].double()
        excess = max(excess, float((m - (bound.r * v.sqrt() + bound.u)).max()))
    return excess


def _drive(
    grad_fn: GradFn, hyper: str, fast: bool, steps: int = 300, seed: int = 0, torch_measure: bool = False
) -> tuple[int, int, list[float]]:
    """Adam steps under the guard, each checked against the bounds the guard holds
    (``torch_measure``: measured by the accelerators' code, on the CPU).

    Returns ``(unchecked updates, rolled back updates, the weight bound's per-step growth)``.
    """
    lrs, wd, betas, eps, options = HYPER[hyper]
    torch.manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
    optimizer = torch.optim.Adam(
        [{"params": params[:2], "lr": lrs[0]}, {"params": params[2:], "lr": lrs[1]}],
        betas=betas,
        eps=eps,
        weight_decay=wd,
        fused=True,
        **options,
    )
    update = FusedUpdate(optimizer) if fast else None
    guard = UpdateGuard(params, optimizer)
    guard._cpu = not torch_measure
    rng = np.random.default_rng(seed)
    unchecked, rolled_back, growth = 0, 0, []
    for step in range(steps):
        grads = [torch.as_tensor(g, dtype=torch.float32) for g in grad_fn(step, rng, list(SHAPES))]
        norm = math.sqrt(sum(float(g.double().square().sum()) for g in grads))
        before = guard._bound
        copied = guard.prepare(norm)
        if update is not None:
            update.step([grads[:2], grads[2:]])
        else:
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            optimizer.step()
        if not guard.finite():
            assert copied, "an unchecked update came out non-finite"
            guard.restore()
            rolled_back += 1
            continue
        assert all(bool(torch.isfinite(p).all()) for p in params)
        bound = guard._bound
        assert bound is not None
        w, a, v = _true_values(params, optimizer)
        assert w <= bound.w and a <= bound.a and v <= bound.v, (step, (w, a, v), bound)
        assert _ratio_excess(guard, params, optimizer) <= 0.0, (step, bound)
        if not copied:
            unchecked += 1
            assert before is not None
            growth.append((bound.w - before.w) / max(lrs))
    return unchecked, rolled_back, growth


#: the fused mirror (the fast path) takes the spec's options only; optimizer.step() takes all
CASES = [(h, fast) for h in HYPER for fast in (True, False) if not (fast and HYPER[h][4])]


@pytest.mark.parametrize("hyper, fast", CASES, ids=[f"{h}-{'mirror' if f else 'step'}" for h, f in CASES])
@pytest.mark.parametrize("grads", list(GRADS))
def test_the_adam_bound_holds_for_adversarial_gradients(grads: str, hyper: str, fast: bool) -> None:
    unchecked, rolled_back, growth = _drive(GRADS[grads], hyper, fast)
    if hyper.startswith("diverging"):
        assert rolled_back > 0  # and every one of them was copied and checked (in _drive)
        return
    assert rolled_back == 0  # nothing else here overflows: every update is finite
    if hyper not in ("beta1-sq-above-beta2", "huge-decay"):
        assert unchecked >= 250, unchecked  # and the bound proves it on most steps
    if hyper in ("default", "spec-max-lr", "maximize"):
        # lr * 7.3 (the ratio's limit for the default betas) with slack: the old bound
        # grew by lr / ((1 - beta1) eps) = 1e9 lr per step
        assert max(growth) <= 7.6


@pytest.mark.parametrize("hyper", ["default", "diverging-adamw"])
@pytest.mark.parametrize("grads", ["random", "tiny-then-huge"])
def test_the_accelerators_measure_gives_the_same_bounds(grads: str, hyper: str) -> None:
    """The torch measure (for CUDA tensors) run on the CPU: the same outcome as NumPy's."""
    assert _drive(GRADS[grads], hyper, False, steps=120, torch_measure=True) == _drive(
        GRADS[grads], hyper, False, steps=120
    )


def test_the_bound_grows_by_the_ratio_not_by_the_gradient() -> None:
    """However large the gradient, one default Adam step moves a weight by at most
    ``lr * R`` with ``R -> (1 - b1) / sqrt((1 - b2) (1 - b1^2 / b2))``."""
    b1, b2 = 0.9, 0.999
    limit = (1 - b1) / math.sqrt((1 - b2) * (1 - b1 * b1 / b2))
    _, _, growth = _drive(_one_direction, "default", fast=True, steps=400)
    assert 7.2 < limit < 7.3
    assert max(growth) <= limit * 1.02


@pytest.mark.parametrize("path", ["fast", "eager"])
@pytest.mark.parametrize(
    "spec",
    [
        {"name": "d", "task": "classification", "input_shape": [64], "num_classes": 10},
        {"name": "r", "task": "regression", "input_shape": [16], "output_dim": 2},
        {
            "name": "x",
            "task": "classification",
            "input_shape": [16],
            "num_classes": 3,
            "optimizer": {"lr": 10.0, "weight_decay": 1.0, "skip_lr_scale": 100.0},
        },
    ],
    ids=["default", "regression", "spec-extremes"],
)
def test_the_default_spec_copies_only_its_first_update(path: str, spec: dict[str, Any]) -> None:
    learner = OnlineLearner(spec, path=path)
    guard = learner._guard
    rng = np.random.default_rng(3)
    size, regression = spec["input_shape"][0], spec["task"] == "regression"
    failed = 0
    for _ in range(200):
        x = (rng.normal(size=size) * 20 + 3).astype(np.float32)
        y = rng.normal(size=2).tolist() if regression else int(rng.integers(spec["num_classes"]))
        try:
            learner.learn_one(x, y)
        except NonFiniteStepError:  # a huge learning rate may blow up the loss
            failed += 1
    assert failed == 0 and guard.updates == 200
    assert guard.copies == 1, guard.copies  # the first update measures; the bound covers the rest


def test_a_huge_learning_rate_after_many_unchecked_steps_still_rolls_back() -> None:
    spec = {"name": "d", "task": "classification", "input_shape": [8], "num_classes": 3}
    learner = OnlineLearner(spec)
    rng = np.random.default_rng(4)
    samples = [((rng.normal(size=8) * 5).astype(np.float32), int(rng.integers(3))) for _ in range(60)]
    for x, y in samples[:50]:
        learner.learn_one(x, y)
    assert learner._guard.copies == 1
    before = learner.state_bytes()
    lrs = [group["lr"] for group in learner.optimizer.param_groups]
    for group in learner.optimizer.param_groups:
        group["lr"] = 1e300  # beyond the bounds (and float32): copied, checked, refused
    with pytest.raises(NonFiniteStepError, match="non-finite weights"):
        learner.learn_one(*samples[50])
    for group, lr in zip(learner.optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    assert learner._guard.copies == 2 and learner.state_bytes() == before
    learner.learn_one(*samples[51])  # measured again, then bounded
    learner.learn_one(*samples[52])
    assert learner._guard.copies == 3


def test_amsgrad_and_fractional_steps_are_always_checked() -> None:
    params = [torch.nn.Parameter(torch.randn(4))]
    optimizer = torch.optim.Adam(params, amsgrad=True, fused=True)
    guard = UpdateGuard(params, optimizer)
    for _ in range(5):
        params[0].grad = torch.randn(4)
        assert guard.prepare(float(params[0].grad.norm()))
        optimizer.step()
        assert guard.finite()
    optimizer = torch.optim.Adam(params, fused=True)
    guard = UpdateGuard(params, optimizer)
    params[0].grad = torch.randn(4)
    guard.prepare(float(params[0].grad.norm()))
    optimizer.step()
    assert guard.finite() and not guard.prepare(1.0)  # bounded: whole step counts
    optimizer.state[params[0]]["step"] += 0.5  # the kernel would truncate it
    guard.reset()
    guard.prepare(1.0)
    optimizer.step()
    assert guard.finite() and guard.prepare(1.0)


def test_the_fused_mirror_refuses_decoupled_weight_decay() -> None:
    params = [torch.nn.Parameter(torch.randn(4))]
    with pytest.raises(ValueError, match="AdamW"):
        FusedUpdate(torch.optim.AdamW(params, fused=True))
