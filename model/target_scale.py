"""Running standardization of regression targets (``network.target_norm: running``).

A regression head trained on raw targets first has to learn their scale (diabetes'
targets are near 150; Adam moves a weight by about ``lr`` a step), which takes most
of a short stream. Instead each step trains on its target standardized by the mean and
deviation of the targets *before* it, and the network's outputs are mapped back into
the targets' units, so the prediction a step returns is still made before the update.

The statistics are Welford's running mean and sum of squared deviations, per output, in
float64 on the host: deterministic, exact over long streams, and cheap next to a step.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

#: Until two targets with a spread have been seen, the deviation is taken as 1.
_UNIT = 1.0


class TargetScaler:
    """Per-output running mean and deviation of the targets seen so far."""

    def __init__(self, size: int) -> None:
        self.count = 0
        self.mean = np.zeros(size, dtype=np.float64)
        self.m2 = np.zeros(size, dtype=np.float64)

    def std(self) -> np.ndarray:
        """The population deviation of the targets so far (1 where there is none yet)."""
        if self.count < 2:
            return np.full_like(self.mean, _UNIT)
        var = self.m2 / self.count
        return np.where(var > 0, np.sqrt(var), _UNIT)

    def scale(self, y: Tensor) -> Tensor:
        """A raw target ``(K,)`` as the target the network trains on (in ``y``'s dtype)."""
        raw = y.numpy()
        return torch.from_numpy(((raw.astype(np.float64) - self.mean) / self.std()).astype(raw.dtype))

    def unscale(self, out: np.ndarray) -> np.ndarray:
        """Network outputs ``(N, K)`` in the targets' units (in the outputs' dtype)."""
        return (out.astype(np.float64) * self.std() + self.mean).astype(out.dtype)

    def update(self, y: Tensor) -> None:
        """Take one raw target into the statistics (after its step was applied)."""
        value = y.numpy().astype(np.float64)
        self.count += 1
        delta = value - self.mean
        self.mean = self.mean + delta / self.count
        self.m2 = self.m2 + delta * (value - self.mean)

    # -------------------------------------------------------------- persistence
    def to_parts(self) -> tuple[dict[str, Tensor], int]:
        tensors = {"mean": torch.from_numpy(self.mean.copy()), "m2": torch.from_numpy(self.m2.copy())}
        return tensors, self.count

    @classmethod
    def from_parts(cls, size: int, tensors: dict[str, Tensor], count: object) -> TargetScaler:
        """The scaler whose :meth:`to_parts` these are; ``ValueError`` if they are
        missing or do not fit ``size`` outputs."""
        mean, m2 = tensors.get("mean"), tensors.get("m2")
        if mean is None or m2 is None or count is None:
            raise ValueError("the state has no target statistics (network.target_norm is 'running')")
        if mean.shape != (size,) or m2.shape != (size,) or type(count) is not int or count < 0:
            raise ValueError("the state's target statistics do not fit this model")
        scaler = cls(size)
        scaler.mean = mean.to(torch.float64).numpy().copy()
        scaler.m2 = m2.to(torch.float64).numpy().copy()
        scaler.count = count
        return scaler
