"""The memory estimate of a spec (budget.py): exact for weights, buffers and optimizer
state, and an upper bound (but not an absurd one) on what one training step holds,
measured as the peak resident memory of a real step in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from model.budget import estimate_memory, format_bytes
from model.learner import OnlineLearner
from model.spec import ModelSpec

REPO = Path(__file__).resolve().parents[2]
SPECS: dict[str, dict[str, Any]] = {
    "mlp-adam": {"name": "a", "task": "classification", "input_shape": [64], "num_classes": 10},
    "mlp-sgd": {
        "name": "b",
        "task": "regression",
        "input_shape": [20],
        "optimizer": {"kind": "sgd", "lr": 0.01, "momentum": 0.9},
    },
    "mlp-sgd-plain": {
        "name": "c",
        "task": "regression",
        "input_shape": [20],
        "optimizer": {"kind": "sgd", "lr": 0.01, "momentum": 0.0},
    },
    "cnn": {"name": "d", "task": "classification", "input_shape": [3, 16, 16], "num_classes": 5},
    "rnn": {"name": "e", "task": "regression", "input_shape": [7, 3], "network": {"hidden": [16, 8]}},
    "layer": {
        "name": "f",
        "task": "classification",
        "input_shape": [8],
        "num_classes": 3,
        "norm": {"kind": "layer"},
    },
}


def _tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("key", sorted(SPECS))
def test_weights_buffers_and_optimizer_state_are_exact(key: str) -> None:
    spec = ModelSpec.model_validate(SPECS[key])
    est = estimate_memory(spec)
    learner = OnlineLearner(spec)
    x = torch.randn(spec.input_shape)
    y = 1 if spec.task == "classification" else [0.5] * spec.output_size
    learner.learn_one(x, y)  # creates the optimizer state
    assert est.parameters == _tensor_bytes(learner.network.parameters())
    assert est.buffers == _tensor_bytes(learner.network.buffers())
    state = [t for s in learner.optimizer.state.values() for t in s.values() if t.dim() > 0]
    assert est.optimizer_state == _tensor_bytes(state)
    blob = learner.state_bytes()
    assert len(blob) <= est.state_bytes < len(blob) + 256 * 1024


# Peak resident memory of one step: Linux resets the high-water mark (VmHWM) when "5" is
# written to /proc/self/clear_refs, so the peaks of importing torch do not count.
_MEASURE = """
import json, sys
import psutil, torch
torch.set_num_threads(1)
from model.learner import OnlineLearner
spec = json.loads(sys.argv[1])
learner = OnlineLearner(spec)
x = torch.randn(spec["input_shape"])
y = 1 if spec["task"] == "classification" else 0.5
learner.predict_one(x)  # warm the allocator and the kernels, without the step's own buffers
before = psutil.Process().memory_info().rss
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
learner.learn_one(x, y)
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
print(json.dumps(peak - before))
"""


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "big-cnn", "task": "classification", "input_shape": [1, 128, 128], "num_classes": 3,
         "network": {"channels": [64]}},
        {"name": "long-rnn", "task": "regression", "input_shape": [1500, 4], "network": {"hidden": [256]}},
    ],
    ids=["cnn", "rnn"],
)  # fmt: skip
def test_the_step_estimate_bounds_a_measured_step(spec: dict[str, Any]) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, json.dumps(spec)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    measured = json.loads(out.stdout)
    est = estimate_memory(ModelSpec.model_validate(spec))
    step_estimate = est.training_bytes - est.parameters  # the weights existed before the step
    assert measured > 4 * 1024 * 1024, "the step must allocate enough to measure"
    assert measured <= step_estimate, (format_bytes(measured), format_bytes(step_estimate))
    assert step_estimate <= 4 * measured, (format_bytes(measured), format_bytes(step_estimate))


def test_the_largest_activation_of_a_cnn_is_its_widest_block() -> None:
    spec = ModelSpec.model_validate(
        {"name": "x", "task": "classification", "input_shape": [1, 1024, 1024], "num_classes": 2,
         "network": {"channels": [8192]}}
    )  # fmt: skip
    est = estimate_memory(spec)
    assert est.largest_activation == 8192 * 1024 * 1024 * 4  # 32 GiB: refused at create
    assert format_bytes(est.largest_activation) == "32.0 GiB"
    assert format_bytes(512) == "512 B" and format_bytes(1536) == "1.5 KiB"


def test_a_stateful_rnn_step_holds_a_window_of_bptt_steps() -> None:
    """A stateful rnn takes one time step ``[F]`` per call and learns over its last
    ``bptt`` steps: one step holds what a ``[bptt, F]`` sequence does."""
    from model.budget import _hidden_elements

    stateful = ModelSpec.model_validate(
        {
            "name": "s",
            "task": "regression",
            "input_shape": [3],
            "network": {"kind": "rnn", "stateful": True, "bptt": 12, "hidden": [16, 8]},
        }
    )
    sequence = ModelSpec.model_validate(
        {
            "name": "q",
            "task": "regression",
            "input_shape": [12, 3],
            "network": {"kind": "rnn", "hidden": [16, 8]},
        }
    )
    assert _hidden_elements(stateful) == _hidden_elements(sequence)
