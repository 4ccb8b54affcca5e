"""Bodies of ``POST .../labels``, documented at ``/docs`` (the route parses them itself)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from service.api.schemas import PREDICTION_ID_PATTERN, LearnResponse, Number


class LabelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prediction_id: str = Field(
        pattern=PREDICTION_ID_PATTERN, description="the id a predict with label_later answered"
    )
    y: Number | list[Number] = Field(description="class index (classification); number or list (regression)")


class LabelBatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: list[LabelRequest] = Field(min_length=1, description="learned in this order, one step each")


class LabelResponse(LearnResponse):
    """``prediction`` is the one served when the prediction was made (what the metrics
    score), ``loss`` the step's loss now."""


class LabelBatchResponse(BaseModel):
    step: int
    results: list[LabelResponse]


LABEL_EXAMPLES = {
    "one": {"summary": "the label of one prediction", "value": {"prediction_id": "3f2a9c", "y": 7}},
    "batch": {
        "summary": "labels of two predictions, learned in order",
        "value": {"labels": [{"prediction_id": "3f2a9c", "y": 7}, {"prediction_id": "order-118", "y": 2}]},
    },
}
