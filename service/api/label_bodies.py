"""Bodies of delayed labels: the optional ``label_later``/``prediction_id`` fields of a
predict sample, and the labels of ``POST .../labels``. Messages name the field."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from service.api.schemas import PREDICTION_ID_PATTERN
from service.errors import ConflictError, InvalidInputError, PayloadTooLargeError

_ID_RE = re.compile(PREDICTION_ID_PATTERN)
_SAMPLE_FIELDS = ("x", "label_later", "prediction_id")
_LABEL_FIELDS = ("prediction_id", "y")


@dataclass(frozen=True)
class PredictSample:
    """One sample to predict; ``prediction_id`` is set when it waits for a label."""

    x: Any
    prediction_id: str | None


def _fields(value: Any, allowed: tuple[str, ...], required: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInputError(f"{where} must be a JSON object (got {type(value).__name__})")
    for name in required:
        if name not in value:
            raise InvalidInputError(f"{where} is missing {name!r}")
    for name in value:
        if name not in allowed:
            expected = ", ".join(repr(f) for f in allowed)
            raise InvalidInputError(f"{where} has an unknown field {name!r} (expected {expected})")
    return value


def prediction_id(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise InvalidInputError(
            f"{where}.prediction_id must be 1-128 printable ASCII characters without spaces (got {value!r})"
        )
    return value


def new_prediction_id() -> str:
    return uuid.uuid4().hex


def predict_sample(value: Any, where: str) -> PredictSample:
    """``{"x", "label_later"?, "prediction_id"?}``: a client's id implies label_later."""
    obj = _fields(value, _SAMPLE_FIELDS, ("x",), where)
    later = obj.get("label_later", False)
    if not isinstance(later, bool):
        raise InvalidInputError(f"{where}.label_later must be true or false (got {later!r})")
    given = obj.get("prediction_id")
    if given is not None:
        return PredictSample(obj["x"], prediction_id(given, where))
    return PredictSample(obj["x"], new_prediction_id() if later else None)


def predict_samples(body: Any, max_samples: int) -> list[PredictSample]:
    """``{"samples": [...]}`` of predict/batch."""
    samples = _fields(body, ("samples",), ("samples",), "body")["samples"]
    if not isinstance(samples, list):
        raise InvalidInputError(f"'samples' must be a list (got {type(samples).__name__})")
    if not samples:
        raise InvalidInputError("'samples' is empty")
    if len(samples) > max_samples:
        raise PayloadTooLargeError(f"{len(samples)} samples in one batch; the limit is {max_samples}")
    out = [predict_sample(item, f"samples[{i}]") for i, item in enumerate(samples)]
    ids = [s.prediction_id for s in out if s.prediction_id is not None]
    if len(set(ids)) != len(ids):
        raise ConflictError("a prediction_id appears twice in the batch: ids are unique per model")
    return out


@dataclass(frozen=True)
class LabelItem:
    prediction_id: str
    y: Any


def labels(body: Any, max_labels: int) -> tuple[list[LabelItem], bool]:
    """``{"prediction_id", "y"}`` or ``{"labels": [...]}``; also says which it was."""
    if isinstance(body, dict) and "labels" in body:
        items = _fields(body, ("labels",), ("labels",), "body")["labels"]
        if not isinstance(items, list):
            raise InvalidInputError(f"'labels' must be a list (got {type(items).__name__})")
        if not items:
            raise InvalidInputError("'labels' is empty")
        if len(items) > max_labels:
            raise PayloadTooLargeError(f"{len(items)} labels in one batch; the limit is {max_labels}")
        wheres = [f"labels[{i}]" for i in range(len(items))]
        batch = True
    else:
        items, wheres, batch = [body], ["body"], False
    out = []
    for item, where in zip(items, wheres, strict=True):
        obj = _fields(item, _LABEL_FIELDS, _LABEL_FIELDS, where)
        out.append(LabelItem(prediction_id(obj["prediction_id"], where), obj["y"]))
    return out, batch
