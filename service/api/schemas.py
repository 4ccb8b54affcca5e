"""Request and response bodies of the v1 contract, with the examples shown at ``/docs``.

The hot routes (learn, predict) parse bodies with orjson and validate samples against
the model's spec directly (see :mod:`service.api.bodies`): these models document
those bodies and type every other one.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from model.spec import ModelSpec

Number = int | float
PredictionValue = int | float | list[float]

DIGITS_SPEC = {
    "name": "digits",
    "task": "classification",
    "input_shape": [64],
    "num_classes": 10,
    "network": {"kind": "mlp", "hidden": [128, 64]},
    "norm": {"kind": "online", "alpha_fwd": 0.999, "alpha_bkw": 0.99, "ecm": "ls"},
    "optimizer": {"kind": "sgd", "lr": 0.01, "momentum": 0.9},
    "seed": 0,
}
HOUSES_SPEC = {"name": "houses", "task": "regression", "input_shape": [8], "output_dim": 1}
_X8 = [8.3, 41.0, 6.98, 1.02, 322.0, 2.55, 37.88, -122.23]
_X8B = [7.26, 52.0, 8.29, 1.07, 496.0, 2.8, 37.85, -122.25]


class ErrorBody(BaseModel):
    """Every error answers this shape; ``detail`` names the problem."""

    detail: str = Field(examples=["x has shape [3]; expected [64] (or a flat list of 64 numbers)"])


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="where: body, then field names and list indices")
    msg: str
    type: str


class ValidationErrorBody(ErrorBody):
    """A body or parameter that failed validation: ``detail`` names every problem."""

    errors: list[FieldError] | None = Field(None, description="each problem, where it is")


class ModelInfo(BaseModel):
    name: str
    spec: ModelSpec | None = Field(description="null only for a model whose spec cannot be read")
    step: int = Field(description="samples learned so far (optimizer steps applied)")
    layers: list[str] = Field(description="the Online Normalization layers, in forward order")
    created_at: dt.datetime
    updated_at: dt.datetime | None = Field(description="when a sample was last applied")
    owner: str | None = Field(
        description="the replica that applies its steps (null while none does: a failover in progress)"
    )
    status: str = Field(
        description="ok, or unrecoverable: its state cannot be loaded (see error); DELETE removes it"
    )
    error: str | None = Field(None, description="why it is unrecoverable")


class ModelList(BaseModel):
    models: list[ModelInfo]


class LearnRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    x: list[Any] = Field(description="numbers nested to the model's input_shape, or flat of the same size")
    y: Number | list[Number] = Field(description="class index (classification); number or list (regression)")


class LearnResponse(BaseModel):
    step: int = Field(description="the model's step after this sample")
    loss: float = Field(description="the sample's loss, computed before the update")
    prediction: PredictionValue = Field(description="the prediction made before the update (prequential)")


class LearnBatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples: list[LearnRequest] = Field(min_length=1)


class LearnBatchResponse(BaseModel):
    step: int
    results: list[LearnResponse]


class NonFiniteBody(ErrorBody):
    """An invalid body or sample (``detail`` only: nothing applied), or a step whose loss
    or gradient was not finite: it was rolled back (with ``step``), the model goes on."""

    step: int | None = Field(None, description="non-finite step: the model's step, unchanged by it")
    index: int | None = Field(
        None, description="learn/batch: the failing sample; those before it were applied"
    )
    results: list[LearnResponse] | None = Field(
        None, description="learn/batch: results of the applied samples"
    )


PREDICTION_ID_PATTERN = r"^[\x21-\x7e]{1,128}$"


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    x: list[Any]
    label_later: bool = Field(
        False,
        description="keep the input and this prediction until its label arrives "
        "(POST .../labels with the answer's prediction_id)",
    )
    prediction_id: str | None = Field(
        None,
        pattern=PREDICTION_ID_PATTERN,
        description="your own id for the prediction (1-128 printable ASCII characters, unique per "
        "model); implies label_later",
    )


class PredictResponse(BaseModel):
    prediction: PredictionValue
    probabilities: list[float] | None = Field(None, description="classification only")
    step: int = Field(description="the model's step the prediction was made at")
    prediction_id: str | None = Field(None, description="label_later: the id to label it by")


class PredictItem(BaseModel):
    prediction: PredictionValue
    probabilities: list[float] | None = None
    prediction_id: str | None = Field(None, description="label_later: the id to label it by")


class PredictBatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples: list[PredictRequest] = Field(min_length=1)


class PredictBatchResponse(BaseModel):
    step: int
    predictions: list[PredictItem]


class LayerSummary(BaseModel):
    mu_mean: float
    mu_min: float
    mu_max: float
    std_mean: float
    std_min: float
    std_max: float
    u_mean: float
    u_abs_max: float
    v_mean: float
    v_abs_max: float


class LayerStats(BaseModel):
    name: str
    num_features: int
    alpha_fwd: float
    alpha_bkw: float
    eps: float
    ecm: str | None
    samples_tracked: int
    mu: list[float]
    var: list[float]
    u: list[float]
    v: list[float]
    summary: LayerSummary
    ls_rms: float | None = Field(description="live RMS before layer scaling: 1 when the estimates are right")
    clamped_fraction: float | None = Field(description="ecm 'ac': fraction of activations clamped")


class StatsResponse(BaseModel):
    step: int
    layers: list[LayerStats]


class LatencySummary(BaseModel):
    count: int
    mean_ms: float | None
    p50_ms: float | None
    p99_ms: float | None


class Latencies(BaseModel):
    learn: LatencySummary
    predict: LatencySummary


class MetricsResponse(BaseModel):
    """Prequential metrics: each prediction was made before learning from its sample."""

    model_config = ConfigDict(extra="allow")

    step: int
    samples_seen: int
    loss: float | None = Field(description="cumulative mean loss")
    loss_ewm: float | None = Field(description="exponentially weighted loss (horizon ~100 samples)")
    accuracy: float | None = Field(None, description="classification")
    accuracy_ewm: float | None = Field(None, description="classification")
    mae: float | None = Field(None, description="regression")
    mae_ewm: float | None = Field(None, description="regression")
    latency: Latencies


class HealthResponse(BaseModel):
    status: str
    replica: str = Field(description="this replica's id (ONLINENORM_REPLICA_ID, default host:pid)")
    redis: str = Field(
        description="up; down (unreachable); or out of memory (answers, refuses writes). /healthz: as "
        "last seen; /readyz: as it answers now"
    )
    data_loss: dict[str, Any] | None = Field(
        None, description="readiness: set once this replica saw Redis lose data under it"
    )


class UnreadyBody(ErrorBody):
    """Not ready: ``detail`` says why (Redis unreachable, or out of memory)."""

    status: str
    replica: str
    redis: str
    data_loss: dict[str, Any] | None = None


class ReplicaInfo(BaseModel):
    id: str
    models: list[str] = Field(description="the models it owns (applies the steps of)")
    started_at: float | None
    self: bool = Field(description="the replica that answered")


class ReplicaList(BaseModel):
    replicas: list[ReplicaInfo]


LEARN_EXAMPLES = {
    "classification": {"summary": "a digit", "value": {"x": [0.0, 3.0, 12.0, 15.0] + [4.0] * 60, "y": 7}},
    "regression": {"summary": "a house", "value": {"x": _X8, "y": 4.526}},
}
LEARN_BATCH_EXAMPLES = {
    "regression": {
        "summary": "two houses, applied in order",
        "value": {"samples": [{"x": _X8, "y": 4.526}, {"x": _X8B, "y": 3.585}]},
    }
}
PREDICT_EXAMPLES = {
    "classification": {"summary": "a digit", "value": {"x": [0.0, 3.0, 12.0, 15.0] + [4.0] * 60}},
    "regression": {"summary": "a house", "value": {"x": _X8}},
}
PREDICT_BATCH_EXAMPLES = {
    "regression": {"summary": "two houses", "value": {"samples": [{"x": _X8}, {"x": _X8B}]}}
}
SPEC_EXAMPLES = {
    "classification": {"summary": "64 features, 10 classes, ON MLP", "value": DIGITS_SPEC},
    "regression": {"summary": "8 features, one target, all defaults", "value": HOUSES_SPEC},
}


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


def json_body(model: type[BaseModel], examples: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` documenting a body that the route parses itself."""
    schema = model.model_json_schema()
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _inline(schema, schema.get("$defs", {})), "examples": examples}
            },
        }
    }
