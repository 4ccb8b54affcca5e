"""Fast one-sample training steps: the same maths as the eager autograd step, less dispatch.

Which path a learner takes is a function of its spec and device alone
(:func:`unsupported_reason`), decided once when the learner is built, never of timing:
a model replayed from its log after a crash takes every step on the path the original
took, so recovery stays bit for bit.

Covered: ``mlp`` on CPU, every option of its spec (input standardizer, ON with layer
scaling, clamping or none, LayerNorm, no norm, the skip path, SGD and Adam, weight decay,
clipping, classification and regression). Everything else takes the eager autograd
step, which also stays the reference the fast path is tested against.
"""

from __future__ import annotations

import torch

from model.fast.mlp import MLPStep, Pending
from model.spec import ModelSpec

__all__ = ["MLPStep", "Pending", "unsupported_reason"]


def unsupported_reason(spec: ModelSpec, device: torch.device) -> str | None:
    """Why ``spec`` on ``device`` takes the eager step, or ``None`` if the fast one covers it."""
    if spec.network_kind != "mlp":
        return f"the fast step covers mlp networks, not {spec.network_kind}"
    if device.type != "cpu":
        return f"the fast step runs on cpu, not {device.type}"
    return None
