"""Predict: eval mode (frozen normalizer statistics), no state change, served from memory
(so predictions keep working while Redis is unreachable). A replica that does not own
the model predicts from a copy at most ``ONLINENORM_FOLLOWER_STALENESS_SECONDS`` old."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from starlette.responses import Response

from model.learner import Prediction
from service.api import bodies
from service.api.deps import ModelDep, ReadAccess, SettingsDep
from service.api.schemas import (
    PREDICT_BATCH_EXAMPLES,
    PREDICT_EXAMPLES,
    ErrorBody,
    PredictBatchRequest,
    PredictBatchResponse,
    PredictRequest,
    PredictResponse,
    json_body,
)
from service.errors import UnavailableError, json_response

T = TypeVar("T")
router = APIRouter(prefix="/v1/models/{name}", tags=["predict"], dependencies=[ReadAccess])

_FIELDS = ("x",)
_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or invalid API key"},
    404: {"model": ErrorBody, "description": "no such model"},
    413: {"model": ErrorBody, "description": "body or batch over the limit"},
    409: {"model": ErrorBody, "description": "the model could not be recovered (DELETE it)"},
    422: {"model": ErrorBody, "description": "invalid body or sample"},
    503: {"model": ErrorBody, "description": "another replica owns the model and Redis is unreachable"},
}


async def _run(predict: Callable[[Any], T], arg: Any) -> T:
    """A forward pass in a worker thread; one that raises (an allocation that failed) is
    the service's trouble, not the client's, and changes nothing: 503, retry later."""
    try:
        return await asyncio.to_thread(predict, arg)
    except Exception as exc:
        raise UnavailableError(
            f"the prediction failed on this replica ({type(exc).__name__}: {exc})"
        ) from exc


def _item(p: Prediction) -> dict[str, Any]:
    if p.probabilities is None:
        return {"prediction": p.prediction}
    return {"prediction": p.prediction, "probabilities": p.probabilities}


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=_RESPONSES,
    openapi_extra=json_body(PredictRequest, PREDICT_EXAMPLES),
)
async def predict_sample(handle: ModelDep, request: Request, settings: SettingsDep) -> Response:
    """Predict one sample (+ class probabilities for classification)."""
    started = time.perf_counter()
    sample = bodies.sample_fields(await bodies.read_json(request), _FIELDS)
    xs, _ = await bodies.check_samples(handle.model.learner, [sample], with_y=False, batch=False)
    await handle.readable(settings.FOLLOWER_STALENESS_SECONDS)
    step, prediction = await _run(handle.model.predict_one, xs[0])
    handle.model.predict_latency.record(time.perf_counter() - started)
    return json_response(200, {**_item(prediction), "step": step})


@router.post(
    "/predict/batch",
    response_model=PredictBatchResponse,
    responses=_RESPONSES,
    openapi_extra=json_body(PredictBatchRequest, PREDICT_BATCH_EXAMPLES),
)
async def predict_batch(handle: ModelDep, request: Request, settings: SettingsDep) -> Response:
    """Predict many samples in one eval-mode forward pass."""
    started = time.perf_counter()
    body = await bodies.read_json(request)
    samples = bodies.batch_fields(body, _FIELDS, settings.MAX_BATCH_SAMPLES)
    xs, _ = await bodies.check_samples(handle.model.learner, samples, with_y=False, batch=True)
    await handle.readable(settings.FOLLOWER_STALENESS_SECONDS)
    step, predictions = await _run(handle.model.predict, xs)
    handle.model.predict_latency.record(time.perf_counter() - started)
    return json_response(200, {"step": step, "predictions": [_item(p) for p in predictions]})
