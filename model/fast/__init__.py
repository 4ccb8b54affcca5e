"""Fast one-sample training steps: the same maths as the eager autograd step, less dispatch.

Which path a learner takes is a function of its spec and device alone
(:func:`unsupported_reason`), decided once when the learner is built, never of timing:
a model replayed from its log after a crash takes every step on the path the original
took, so recovery stays bit for bit.

Covered, on CPU: ``mlp`` with every option of its spec (input standardizer, ON with
layer scaling, clamping or none, LayerNorm, no norm, the skip path, SGD and Adam, weight
decay, clipping, classification and regression), ``rnn`` and ``cnn`` with ON or no
norm (the cnn's step in torch operations without the tape, :mod:`model.fast.cnn`).
Everything else (LayerNorm in an rnn or cnn, grouped layer scaling, stateful rnns, any
GPU) takes the eager autograd step,
which also stays the reference the fast path is tested against.
"""

from __future__ import annotations

import torch
from torch import nn

from model.fast.base import Pending
from model.fast.cnn import CNNStep
from model.fast.mlp import MLPStep
from model.fast.rnn import RNNStep
from model.spec import ModelSpec

FastStep = MLPStep | RNNStep | CNNStep

__all__ = ["CNNStep", "FastStep", "MLPStep", "Pending", "RNNStep", "build", "unsupported_reason"]


def unsupported_reason(spec: ModelSpec, device: torch.device) -> str | None:
    """Why ``spec`` on ``device`` takes the eager step, or ``None`` if the fast one covers it."""
    kind = spec.network_kind
    if spec.network.stateful:
        return "a stateful rnn steps through its own streaming model (model.stream), not a fast step"
    if spec.norm.kind == "online" and spec.norm.ecm == "ls" and spec.norm.ls_group_size is not None:
        return "grouped layer scaling (norm.ls_group_size) runs on the eager step only"
    if kind != "mlp" and spec.norm.kind == "layer":
        return f"the fast {kind} step covers online or no normalization, not layer"
    if device.type != "cpu":
        return f"the fast step runs on cpu, not {device.type}"
    return None


def build(spec: ModelSpec, network: nn.Module, optimizer: torch.optim.Optimizer) -> FastStep:
    """The fast step of a network :func:`unsupported_reason` accepts."""
    cls = {"mlp": MLPStep, "rnn": RNNStep, "cnn": CNNStep}[spec.network_kind]
    return cls(
        network,
        optimizer,
        classify=spec.task == "classification",
        clip_grad_norm=spec.optimizer.clip_grad_norm,
    )
