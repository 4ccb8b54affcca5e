"""Prequential (test-then-train) metrics of a learner: part of its persisted state."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class PrequentialMetrics:
    """Running loss and accuracy (classification) or MAE (regression) of the
    predictions made *before* each update: an honest estimate of live performance.

    ``*_ewm`` are exponentially weighted with ``decay`` (horizon ~ 1/(1-decay) samples),
    bias-corrected so the first values are plain means.
    """

    task: str
    decay: float = 0.99
    samples_seen: int = 0
    loss_sum: float = 0.0
    score_sum: float = 0.0  # correct predictions, or absolute errors
    loss_ewm_raw: float = 0.0
    score_ewm_raw: float = 0.0

    def update(self, loss: float, score: float) -> None:
        self.samples_seen += 1
        self.loss_sum += loss
        self.score_sum += score
        self.loss_ewm_raw = self.decay * self.loss_ewm_raw + (1 - self.decay) * loss
        self.score_ewm_raw = self.decay * self.score_ewm_raw + (1 - self.decay) * score

    def _mean(self, total: float) -> float | None:
        return total / self.samples_seen if self.samples_seen else None

    def _ewm(self, raw: float) -> float | None:
        if not self.samples_seen:
            return None
        return raw / (1 - math.pow(self.decay, self.samples_seen))

    def as_dict(self) -> dict[str, float | int | None]:
        """The public view: what the service's ``metrics`` endpoint reports."""
        score = "accuracy" if self.task == "classification" else "mae"
        return {
            "samples_seen": self.samples_seen,
            "loss": self._mean(self.loss_sum),
            "loss_ewm": self._ewm(self.loss_ewm_raw),
            score: self._mean(self.score_sum),
            f"{score}_ewm": self._ewm(self.score_ewm_raw),
        }

    def to_json(self) -> dict[str, float | int | str]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> PrequentialMetrics:
        return cls(**data)
