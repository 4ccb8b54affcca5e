"""On a CUDA device the learner takes the eager step (the fast steps are CPU-only) and
agrees with the CPU step. Runs only where CUDA is present."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.learner import OnlineLearner

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SPEC = {"name": "g", "task": "classification", "input_shape": [16], "num_classes": 4}


def test_a_cuda_learner_takes_the_eager_step_and_agrees_with_cpu() -> None:
    gpu, cpu = OnlineLearner(SPEC, device="cuda"), OnlineLearner(SPEC, path="eager")
    assert gpu.path == "eager"
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = rng.normal(size=16).astype(np.float32), int(rng.integers(4))
        a, b = gpu.learn_one(x, y), cpu.learn_one(x, y)
        assert a.loss == pytest.approx(b.loss, rel=1e-4)
    restored = OnlineLearner.from_state_bytes(gpu.state_bytes())  # a GPU model's state loads on CPU
    for (name, t), (_, r) in zip(
        gpu.network.state_dict().items(), restored.network.state_dict().items(), strict=True
    ):
        assert torch.equal(t.cpu(), r), name
