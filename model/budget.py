"""What a model costs in memory before it exists: parameters, gradients, optimizer state,
the activations of one training step, and the size of its persisted state.

A service that trains whatever spec it is given must refuse a spec whose first step
cannot be allocated *before* accepting samples for it: a step that fails after the
sample was logged would poison the log. Parameters and buffers are counted exactly by
building the network on PyTorch's ``meta`` device (no memory is allocated); the
activations of one step are a deliberate over-estimate from the layer shapes (each
stored intermediate of the forward pass and its gradient, with room for ON's
temporaries), checked against measured peaks in ``tests/model/test_budget.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.networks import build_network
from model.spec import ModelSpec

FLOAT_BYTES = 4
#: Stored tensors per element of a hidden layer's output in one training step: the
#: linear/conv output, ON's centred and scaled copies and layer-scaling output, the
#: activation and pooling outputs, and a gradient for each. The rnn keeps every time
#: step's small tensors apart (and takes an eval forward for its prediction first).
_TEMPS_PER_ELEMENT = {"mlp": 16, "cnn": 16, "rnn": 32}
#: safetensors header and JSON metadata on top of the tensors themselves.
_STATE_OVERHEAD = 64 * 1024


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one model; ``training_bytes`` is what a learn step may hold at once."""

    parameters: int
    buffers: int
    optimizer_state: int
    activations: int
    largest_activation: int

    @property
    def training_bytes(self) -> int:
        """Weights, their gradients, optimizer state, ON buffers (and their rollback
        copies), and one step's activations."""
        return 2 * self.parameters + self.optimizer_state + 2 * self.buffers + self.activations

    @property
    def state_bytes(self) -> int:
        """The persisted state: weights, buffers, optimizer state."""
        return self.parameters + self.buffers + self.optimizer_state + _STATE_OVERHEAD

    def forward_bytes_per_sample(self) -> int:
        """An eval-mode forward keeps no gradients: about half a training step's activations."""
        return max(FLOAT_BYTES, self.activations // 2)


def _hidden_elements(spec: ModelSpec) -> tuple[int, int]:
    """Sum and maximum over the hidden layers of their output elements, for one sample."""
    kind = spec.network_kind
    if kind == "mlp":
        sizes = [spec.input_size, *spec.network.hidden, spec.output_size]
    elif kind == "rnn":
        if spec.network.stateful:  # one time step [F] per call; a step learns over the last bptt
            steps, features = spec.network.bptt, spec.input_shape[0]
        else:
            steps, features = spec.input_shape
        sizes = [steps * features, *(steps * h for h in spec.network.hidden), spec.output_size]
    else:
        channels, height, width = spec.input_shape
        sizes = [channels * height * width]
        for out_channels in spec.network.channels:
            sizes.append(out_channels * height * width)  # before pooling: the largest
            if min(height, width) >= 2:
                height, width = height // 2, width // 2
        sizes.append(spec.output_size)
    return sum(sizes), max(sizes)


def estimate_memory(spec: ModelSpec) -> MemoryEstimate:
    """The memory of ``spec``'s learner (float32), without allocating any of it."""
    with torch.device("meta"):
        network = build_network(spec)
    params = sum(p.numel() for p in network.parameters()) * FLOAT_BYTES
    buffers = sum(b.numel() * b.element_size() for b in network.buffers())
    opt = spec.optimizer
    state_per_param = 2 if opt.kind == "adam" else (1 if opt.momentum > 0 else 0)
    total, largest = _hidden_elements(spec)
    return MemoryEstimate(
        parameters=params,
        buffers=buffers,
        optimizer_state=state_per_param * params,
        activations=total * _TEMPS_PER_ELEMENT[spec.network_kind] * FLOAT_BYTES,
        largest_activation=largest * FLOAT_BYTES,
    )


def format_bytes(n: int) -> str:
    """``1536`` -> ``'1.5 KiB'``: sizes in error messages people read."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
