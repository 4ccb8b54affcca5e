"""The NumPy window against the eager (autograd) one: same gradients, same streams."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from model.learner import OnlineLearner

from .helpers import assert_rel

NORMS: dict[str, dict[str, Any]] = {
    "online-ls": {"kind": "online"},
    "online-ac": {"kind": "online", "ecm": "ac", "clamp_val": 1.5},
    "online-noecm": {"kind": "online", "ecm": None},
    "none": {"kind": "none"},
}


def _spec(norm: str, task: str) -> dict[str, Any]:
    out = {"num_classes": 3} if task == "classification" else {"output_dim": 2}
    return {
        "name": "s",
        "task": task,
        "input_shape": [3],
        **out,
        "network": {"stateful": True, "hidden": [7, 5], "bptt": 5},
        "norm": NORMS[norm],
        "optimizer": {"kind": "adam", "lr": 0.01},
    }


def _calls(task: str, n: int) -> list[tuple[str, np.ndarray, Any]]:
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        y: Any = int(rng.integers(3)) if task == "classification" else rng.normal(size=2).tolist()
        out.append(
            (
                "ab"[int(rng.integers(2))],
                (rng.normal(size=3) * 3 - 1).astype(np.float32),
                None if i % 5 == 4 else y,
            )
        )
    return out


@pytest.mark.parametrize("task", ["regression", "classification"])
@pytest.mark.parametrize("norm", sorted(NORMS))
def test_one_window_gives_the_eager_gradients_and_control_increments(norm: str, task: str) -> None:
    eager = OnlineLearner(_spec(norm, task), path="eager")
    states: dict[str, Any] = {}
    for name, x, y in _calls(task, 12):
        states[name], _ = eager.stream_step(states.get(name), x, y)
    fast = OnlineLearner.from_state_bytes(eager.state_bytes())
    assert fast.path == "fast"
    x, y = np.ones(3, dtype=np.float32), (1 if task == "classification" else [0.5, -0.5])
    ra = eager.stream_step(states["a"], x, y)[1]
    rb = fast.stream_step(states["a"], x, y)[1]
    assert ra.prediction == rb.prediction  # the shared arrival
    assert ra.loss == pytest.approx(rb.loss, rel=1e-5)
    for (name, pa), pb in zip(eager.network.named_parameters(), fast.network.parameters(), strict=True):
        assert pa.grad is not None and pb.grad is not None, name
        assert_rel(pb.grad, pa.grad, 1e-4, f"grad {name}")
    for ma, mb in zip(eager.network.modules(), fast.network.modules(), strict=True):
        for name in ("u", "v"):
            if hasattr(ma, name) and isinstance(getattr(ma, name), torch.Tensor):
                assert_rel(getattr(mb, name), getattr(ma, name), 1e-4, name)


@pytest.mark.parametrize("norm", ["online-ls", "none"])
def test_the_two_paths_follow_the_same_trajectory(norm: str) -> None:
    calls = _calls("regression", 40)
    results = {}
    for path in ("eager", "fast"):
        learner = OnlineLearner(_spec(norm, "regression"), path=path)  # type: ignore[arg-type]
        states: dict[str, Any] = {}
        out = []
        for name, x, y in calls:
            states[name], r = learner.stream_step(states.get(name), x, y)
            out.append(r.prediction.prediction)
        results[path] = np.array(out)
    np.testing.assert_allclose(results["fast"], results["eager"], rtol=1e-3, atol=1e-4)
