"""The state of one stream of a stateful rnn: what exact truncated BPTT needs, bounded.

A stream's state is immutable: a step returns a new one and leaves the old one as it
was, so a caller that keeps the old state until a step succeeds has its rollback for
free. It holds, for the last ``n = min(t, bptt)`` time steps (oldest first), the
standardized input, every layer's hidden state computed on arrival and, with Online
Normalization, every layer's running mean and variance *before* that step (the ones
the step was normalized with), plus the hidden states before the oldest of them
(``h0``), from which a window is recomputed.

Memory per stream, float32, with ``F`` input features and ``H = sum(hidden)``::

    nbytes = 4 * (H + n * (F + H + 2 * H * online))      n = min(t, bptt)
    max    = 4 * (H + bptt * (F + (3 if online else 1) * H))

e.g. F = 1, hidden = [32], bptt = 16, online: 4 * (32 + 16 * 97) = 6,336 bytes. The
position ``t`` and ``n`` live in the JSON meta.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from model.spec import ModelSpec

STREAM_FORMAT = 1
_BYTES = 4  # float32


@dataclass(frozen=True)
class StreamLayout:
    """The shapes of a spec's stream states."""

    features: int
    hidden: tuple[int, ...]
    bptt: int
    online: bool

    @classmethod
    def of(cls, spec: ModelSpec) -> StreamLayout:
        if not spec.network.stateful:
            raise ValueError(f"model {spec.name!r} is not a stateful rnn")
        return cls(
            spec.input_shape[0], tuple(spec.network.hidden), spec.network.bptt, spec.norm.kind == "online"
        )

    @property
    def total_hidden(self) -> int:
        return sum(self.hidden)

    def nbytes(self, steps: int) -> int:
        """Bytes of a state holding ``steps`` window steps (the formula of the module)."""
        h = self.total_hidden
        return _BYTES * (h + steps * (self.features + h + (2 * h if self.online else 0)))

    @property
    def max_nbytes(self) -> int:
        """The bound of one stream's state: a full window of ``bptt`` steps."""
        return self.nbytes(self.bptt)


@dataclass(frozen=True)
class WindowStep:
    """One time step of the window: ``inputs`` ``(F,)`` standardized; ``hidden``
    ``(H,)`` every layer's state after the step, concatenated; ``mu``/``var`` ``(H,)``
    every layer's ON statistics before it (``None`` without Online Normalization)."""

    inputs: Tensor
    hidden: Tensor
    mu: Tensor | None
    var: Tensor | None


@dataclass(frozen=True)
class StreamState:
    """Position ``t`` (steps seen), ``h0`` ``(H,)`` and the window ``steps``."""

    t: int
    h0: Tensor
    steps: tuple[WindowStep, ...]

    @classmethod
    def empty(cls, layout: StreamLayout) -> StreamState:
        """A stream that has seen nothing: zero hidden states."""
        return cls(0, torch.zeros(layout.total_hidden), ())

    @property
    def hidden(self) -> Tensor:
        """The hidden states now ``(H,)``: after the last step."""
        return self.steps[-1].hidden if self.steps else self.h0

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data this state holds (see the module's formula)."""
        total = self.h0.nbytes
        for s in self.steps:
            total += s.inputs.nbytes + s.hidden.nbytes
            if s.mu is not None and s.var is not None:
                total += s.mu.nbytes + s.var.nbytes
        return total

    def pushed(self, step: WindowStep, bptt: int) -> StreamState:
        """The state after ``step``: the window slides, ``h0`` follows the step it drops."""
        steps = (*self.steps, step)
        h0 = self.h0
        if len(steps) > bptt:
            h0 = steps[-bptt - 1].hidden
            steps = steps[-bptt:]
        return StreamState(self.t + 1, h0, steps)

    # ------------------------------------------------------------ serialization
    def to_parts(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Tensors for safetensors (fixed names, window steps stacked oldest first) and
        a JSON-able meta; :meth:`from_parts` inverts it. The same state always gives the
        same parts, so the same bytes."""
        tensors = {"h0": self.h0}
        if self.steps:
            tensors["inputs"] = torch.stack([s.inputs for s in self.steps])
            tensors["hidden"] = torch.stack([s.hidden for s in self.steps])
            if self.steps[0].mu is not None:
                tensors["mu"] = torch.stack([s.mu for s in self.steps])  # type: ignore[misc]
                tensors["var"] = torch.stack([s.var for s in self.steps])  # type: ignore[misc]
        return tensors, {"format": STREAM_FORMAT, "t": self.t, "steps": len(self.steps)}

    @classmethod
    def from_parts(
        cls, tensors: dict[str, Tensor], meta: dict[str, Any], layout: StreamLayout
    ) -> StreamState:
        """The state of :meth:`to_parts`, checked against ``layout``; ``ValueError`` if it does not fit."""
        if not isinstance(meta, dict) or meta.get("format") != STREAM_FORMAT:
            raise ValueError(
                f"unsupported stream state format {meta.get('format') if isinstance(meta, dict) else meta!r}"
            )
        t, n = meta.get("t"), meta.get("steps")
        if not (isinstance(t, int) and isinstance(n, int)) or not 0 <= n <= min(t, layout.bptt):
            raise ValueError(f"stream state meta is inconsistent (t={t!r}, steps={n!r}, bptt={layout.bptt})")
        h, f = layout.total_hidden, layout.features
        expected: dict[str, tuple[int, ...]] = {"h0": (h,)}
        if n:
            expected |= {"inputs": (n, f), "hidden": (n, h)}
            if layout.online:
                expected |= {"mu": (n, h), "var": (n, h)}
        if set(tensors) != set(expected):
            raise ValueError(
                f"stream state tensors {sorted(tensors)} do not fit this model (expected {sorted(expected)})"
            )
        for name, shape in expected.items():
            got = tensors[name]
            if tuple(got.shape) != shape or got.dtype != torch.float32:
                raise ValueError(
                    f"stream state tensor {name!r} is {got.dtype} {list(got.shape)};"
                    f" expected float32 {list(shape)}"
                )
            if not bool(torch.isfinite(got).all()):
                raise ValueError(f"stream state tensor {name!r} is not finite")
        clone = {k: v.detach().to("cpu").clone() for k, v in tensors.items()}
        mu, var = clone.get("mu"), clone.get("var")
        steps = tuple(
            WindowStep(
                clone["inputs"][i],
                clone["hidden"][i],
                None if mu is None else mu[i],
                None if var is None else var[i],
            )
            for i in range(n)
        )
        return cls(t, clone["h0"], steps)
