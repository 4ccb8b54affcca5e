"""What the SDK returns: the v1 contract's answers as typed, read-only objects.

Fields the contract names are typed; anything else the service adds is kept too
(``extra="allow"``), so a newer service never breaks an older SDK.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: A prediction: a class index (classification), a number or a list of numbers (regression).
PredictionValue = int | float | list[float]


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class ModelInfo(_Answer):
    """A model: its spec, step (samples learned), ON layer names, timestamps, the replica
    that owns it (applies its steps), and whether it is usable (``status``)."""

    name: str
    spec: dict[str, Any] | None = None
    step: int = 0
    layers: list[str] = Field(default_factory=list)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    owner: str | None = None
    status: str = "ok"
    error: str | None = None

    @property
    def task(self) -> str:
        return str((self.spec or {}).get("task", ""))


class LearnResult(_Answer):
    """One applied sample: the step it made, its loss, and the prediction made before it."""

    step: int
    loss: float | None
    prediction: PredictionValue | None
    #: True when the service answered a retry from its Idempotency-Key record.
    replayed: bool = False


class LearnBatchResult(_Answer):
    """A batch's results, one per sample, in order; ``step`` is the model's step after it."""

    step: int
    results: list[LearnResult]
    replayed: bool = False


class Prediction(_Answer):
    """Eval-mode prediction; ``probabilities`` for classification. ``prediction_id`` is
    set when it was made with ``label_later``: label it with :meth:`~clients.Client.label`."""

    prediction: PredictionValue
    probabilities: list[float] | None = None
    prediction_id: str | None = None
    step: int | None = None


class StreamResult(_Answer):
    """One time step of a stateful rnn stream: ``t`` is its position in the stream, the
    prediction was made from the advanced hidden state before learning; ``loss`` (and a
    new ``step``) only when ``y`` was given; ``prediction_id`` with ``label_later``."""

    stream: str
    t: int
    prediction: PredictionValue
    probabilities: list[float] | None = None
    loss: float | None = None
    step: int
    prediction_id: str | None = None


class StreamBatchResult(_Answer):
    step: int
    results: list[StreamResult]
    replayed: bool = False


class StreamInfo(_Answer):
    """A live stream of a stateful model: its position and when it last moved."""

    stream: str | None = None
    t: int
    updated_at: datetime | None = None


class LayerStats(_Answer):
    """One Online Normalization layer's running statistics."""

    name: str
    num_features: int
    alpha_fwd: float | None = None
    alpha_bkw: float | None = None
    mu: list[float] = Field(default_factory=list)
    var: list[float] = Field(default_factory=list)
    u: list[float] = Field(default_factory=list)
    v: list[float] = Field(default_factory=list)
    eps: float | None = None
    samples_tracked: int | None = None
    ls_rms: float | None = None
    summary: dict[str, float | None] | None = None


class Stats(_Answer):
    step: int
    layers: list[LayerStats]


class Metrics(_Answer):
    """Prequential metrics: ``accuracy`` (classification) or ``mae`` (regression) and
    their exponentially weighted ``*_ewm`` variants arrive as extra fields."""

    samples_seen: int
    loss: float | None = None
    accuracy: float | None = None
    mae: float | None = None


class Health(_Answer):
    """``/healthz`` or ``/readyz``: ``ok`` says whether the answer was 2xx; ``replica``
    names the replica that answered."""

    ok: bool
    status: str | None = None
    replica: str | None = None


class Replica(_Answer):
    """A live replica of the service and the models it owns."""

    id: str
    models: list[str] = Field(default_factory=list)
    started_at: float | None = None
