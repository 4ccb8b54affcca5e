"""Networks built from a :class:`~model.spec.ModelSpec`: ``mlp``, ``cnn`` and ``rnn``.

Each hidden layer is ``linear/conv -> norm -> activation`` with ``norm`` one of Online
Normalization, LayerNorm or nothing, so the three can be compared on equal terms. Raw
inputs first pass through a warmed-up, parameter-free Online Normalization (unless
``network.input_norm`` is ``"none"``): users post unscaled features, and a streaming
standardizer makes their scale irrelevant from the first samples.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.layers import OnlineNorm, OnlineNorm1d, OnlineNorm2d
from model.spec import ModelSpec, NormSpec


def make_norm(norm: NormSpec, num_features: int, spatial: bool) -> nn.Module:
    """The hidden-layer normalizer of ``norm.kind`` for ``(N, C)`` or ``(N, C, H, W)``."""
    if norm.kind == "online":
        cls = OnlineNorm2d if spatial else OnlineNorm1d
        return cls(
            num_features,
            alpha_fwd=norm.alpha_fwd,
            alpha_bkw=norm.alpha_bkw,
            eps=norm.eps,
            affine=True,
            ecm=norm.ecm,
            ls_eps=norm.ls_eps,
            clamp_val=norm.clamp_val,
            warmup=norm.warmup,
            ls_group_size=norm.ls_group_size if norm.ecm == "ls" else None,
        )
    if norm.kind == "layer":
        return (
            nn.GroupNorm(1, num_features, eps=norm.eps)
            if spatial
            else nn.LayerNorm(num_features, eps=norm.eps)
        )
    return nn.Identity()


def make_input_norm(spec: ModelSpec, num_features: int, spatial: bool) -> nn.Module:
    """A streaming standardizer of raw inputs: ON without affine or ECM, warmed up, its
    output clamped to ``network.input_clamp`` if set."""
    if spec.network.input_norm == "none":
        return nn.Identity()
    clamp = spec.network.input_clamp
    if clamp is None:
        cls = OnlineNorm2d if spatial else OnlineNorm1d
        return cls(num_features, alpha_fwd=spec.norm.alpha_fwd, affine=False, ecm=None, warmup=True)
    clamped = ClampedOnlineNorm2d if spatial else ClampedOnlineNorm1d
    return clamped(
        num_features, alpha_fwd=spec.norm.alpha_fwd, affine=False, ecm=None, warmup=True, clamp=clamp
    )


class _ClampedOutput:
    """Clamps an input standardizer's output to ``±input_clamp``. A subclass of the ON
    layer, not a wrapper, so its state keys stay those of the plain standardizer."""

    def __init__(self, *args: object, clamp: float, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self.input_clamp = clamp

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)  # type: ignore[misc]
        return out.clamp(-self.input_clamp, self.input_clamp)


class ClampedOnlineNorm1d(_ClampedOutput, OnlineNorm1d):
    """:class:`OnlineNorm1d` with its output clamped (``network.input_clamp``)."""


class ClampedOnlineNorm2d(_ClampedOutput, OnlineNorm2d):
    """:class:`OnlineNorm2d` with its output clamped (``network.input_clamp``)."""


def input_clamp(module: nn.Module) -> float | None:
    """The clamp of an input standardizer built by :func:`make_input_norm`, or None."""
    return getattr(module, "input_clamp", None)


class MLP(nn.Module):
    """``[F]`` inputs (any shape is flattened): hidden blocks, then a linear head."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        width = spec.input_size
        self.input_norm = make_input_norm(spec, width, spatial=False)
        bias = spec.norm.kind == "none"  # a normalizer's shift makes the bias redundant
        blocks = []
        for hidden in spec.network.hidden:
            blocks.append(
                nn.Sequential(
                    nn.Linear(width, hidden, bias=bias),
                    make_norm(spec.norm, hidden, spatial=False),
                    nn.ReLU(),
                )
            )
            width = hidden
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(width, spec.output_size)
        self.skip: nn.Linear | None = None
        if spec.network.skip:
            # starts at zero so the first predictions come from the deep path's init alone
            self.skip = nn.Linear(spec.input_size, spec.output_size, bias=False)
            nn.init.zeros_(self.skip.weight)

    def forward(self, x: Tensor) -> Tensor:
        h = self.input_norm(x.flatten(1))
        out = self.head(self.blocks(h))
        return out if self.skip is None else out + self.skip(h)


class CNN(nn.Module):
    """``[C, H, W]`` inputs: conv 3x3 blocks with ``OnlineNorm2d``, pooling, linear head."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        channels, height, width = spec.input_shape
        self.input_norm = make_input_norm(spec, channels, spatial=True)
        bias = spec.norm.kind == "none"
        blocks = []
        for out_channels in spec.network.channels:
            layers: list[nn.Module] = [
                nn.Conv2d(channels, out_channels, kernel_size=3, padding=1, bias=bias),
                make_norm(spec.norm, out_channels, spatial=True),
                nn.ReLU(),
            ]
            if min(height, width) >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            blocks.append(nn.Sequential(*layers))
            channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, spec.output_size)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(self.input_norm(x))
        return self.head(h.mean(dim=(2, 3)))


class NormalizedRNNLayer(nn.Module):
    """``h_t = tanh(norm(W x_t + U h_{t-1}))``: normalization of the recurrent
    pre-activations, as in the paper's RNN/LSTM experiments. One normalizer is shared
    across time steps, so ON's state advances once per step of the sequence."""

    def __init__(self, input_size: int, hidden_size: int, norm: NormSpec) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.input_proj = nn.Linear(input_size, hidden_size, bias=norm.kind == "none")
        self.recurrent = nn.Linear(hidden_size, hidden_size, bias=False)
        self.norm = make_norm(norm, hidden_size, spatial=False)
        nn.init.orthogonal_(self.recurrent.weight)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` is ``(N, T, F)``; returns every hidden state, ``(N, T, H)``."""
        projected = self.input_proj(x)
        h = x.new_zeros(x.shape[0], self.hidden_size)
        outputs = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.norm(projected[:, t] + self.recurrent(h)))
            outputs.append(h)
        return torch.stack(outputs, dim=1)


class RNN(nn.Module):
    """``[T, F]`` sequences: stacked normalized RNN layers, head on the last state."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        _, features = spec.input_shape
        self.input_norm = make_input_norm(spec, features, spatial=False)
        layers = []
        width = features
        for hidden in spec.network.hidden:
            layers.append(NormalizedRNNLayer(width, hidden, spec.norm))
            width = hidden
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(width, spec.output_size)

    def forward(self, x: Tensor) -> Tensor:
        # per-feature input statistics over the time steps of each sample: (N, F, T)
        h = self.input_norm(x.transpose(1, 2)).transpose(1, 2)
        for layer in self.layers:
            h = layer(h)
        return self.head(h[:, -1])


def build_network(spec: ModelSpec) -> nn.Module:
    """The network of ``spec``, initialized from ``spec.seed`` without touching global RNG."""
    cls: type[nn.Module] = {"mlp": MLP, "cnn": CNN, "rnn": RNN}[spec.network_kind]
    if spec.network.stateful:
        from model.stream import StatefulRNN  # the streaming rnn lives with its learner

        cls = StatefulRNN
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        return cls(spec)


def skip_parameters(network: nn.Module) -> list[nn.Parameter]:
    """Parameters of the linear skip path, which train with a larger learning rate."""
    skip = getattr(network, "skip", None)
    return list(skip.parameters()) if isinstance(skip, nn.Module) else []


def online_norm_layers(network: nn.Module) -> list[tuple[str, OnlineNorm]]:
    """The network's ON layers by qualified name, in forward order."""
    return [(name, m) for name, m in network.named_modules() if isinstance(m, OnlineNorm)]
