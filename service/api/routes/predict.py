"""Predict: eval mode (frozen normalizer statistics), no state change, served from memory
(so predictions keep working while Redis is unreachable). A replica that does not own
the model predicts from a copy at most ``ONLINENORM_FOLLOWER_STALENESS_SECONDS`` old."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request
from redis.exceptions import RedisError
from starlette.responses import Response

from model.learner import NonFinitePredictionError, Prediction
from service import executors
from service.api import bodies, label_bodies
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
from service.config import Settings
from service.errors import ConflictError, InvalidInputError, NotFoundError, UnavailableError, json_response
from service.label_telemetry import label_telemetry
from service.registry import ModelHandle
from service.store import pending
from service.store.connection import UNREACHABLE
from service.telemetry import Telemetry

T = TypeVar("T")
router = APIRouter(prefix="/v1/models/{name}", tags=["predict"], dependencies=[ReadAccess])

_FIELDS = ("x",)
_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or invalid API key"},
    404: {"model": ErrorBody, "description": "no such model"},
    413: {"model": ErrorBody, "description": "body or batch over the limit"},
    409: {
        "model": ErrorBody,
        "description": "the model could not be recovered (DELETE it), or a prediction_id is taken",
    },
    422: {"model": ErrorBody, "description": "invalid body or sample"},
    503: {
        "model": ErrorBody,
        "description": "another replica owns the model and Redis is unreachable (or, with label_later, "
        "the prediction could not be kept)",
    },
}


async def _run(handle: ModelHandle, predict: Callable[[Any], T], arg: Any) -> T:
    """A forward pass in one of the model's own read threads (a slow model's backlog never
    delays another model's); one that raises (an allocation that failed) is the service's
    trouble, not the client's, and changes nothing: 503, retry later."""
    try:
        return await executors.of(handle.model).read(predict, arg)
    except NonFinitePredictionError as exc:  # the input, not the service: nothing to retry
        raise InvalidInputError(str(exc)) from exc
    except Exception as exc:
        raise UnavailableError(
            f"the prediction failed on this replica ({type(exc).__name__}: {exc})"
        ) from exc


def _item(p: Prediction) -> dict[str, Any]:
    if p.probabilities is None:
        return {"prediction": p.prediction}
    return {"prediction": p.prediction, "probabilities": p.probabilities}


def _stateless(handle: ModelHandle) -> None:
    if handle.model.streams is not None:
        raise InvalidInputError(
            "this model is a stateful rnn: it predicts from a stream's hidden state, through "
            "POST .../streams/{stream}/step (without y)"
        )


def _plain(body: Any) -> bool:
    """A body without the delayed-label fields takes the plain path."""
    return isinstance(body, dict) and "label_later" not in body and "prediction_id" not in body


async def _keep(
    handle: ModelHandle,
    settings: Settings,
    telemetry: Telemetry,
    samples: list[label_bodies.PredictSample],
    step: int,
    predictions: list[Prediction],
) -> None:
    """Keep the samples that wait for a label, with what was served, in Redis."""
    kept = [
        pending.Kept(
            s.prediction_id,
            orjson.dumps(s.x),
            orjson.dumps({**_item(p), "step": step}),
        )
        for s, p in zip(samples, predictions, strict=True)
        if s.prediction_id is not None
    ]
    if not kept:
        return
    remote = handle.remote
    try:
        change = await pending.remember(
            remote.redis,
            remote.prefix,
            handle.name,
            handle.incarnation,
            kept,
            settings.LABEL_TTL_SECONDS,
            settings.MAX_PENDING_LABELS,
        )
    except pending.IdExistsError as exc:
        raise ConflictError(
            f"prediction_id {kept[exc.index].prediction_id!r} was already used for a prediction of "
            f"model {handle.name!r}: ids are unique per model"
        ) from None
    except UNREACHABLE as exc:
        remote.health.mark_down(exc)
        raise UnavailableError(f"Redis is unreachable ({exc}): the prediction could not be kept") from exc
    except RedisError as exc:
        raise UnavailableError(f"Redis refused to keep the prediction ({exc})") from exc
    if change is None:
        raise NotFoundError(f"model {handle.name!r} was deleted")
    label_telemetry(telemetry).observe(handle.name, change)


def _answer(p: Prediction, sample: label_bodies.PredictSample | None) -> dict[str, Any]:
    item = _item(p)
    if sample is not None and sample.prediction_id is not None:
        item["prediction_id"] = sample.prediction_id
    return item


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=_RESPONSES,
    openapi_extra=json_body(PredictRequest, PREDICT_EXAMPLES),
)
async def predict_sample(handle: ModelDep, request: Request, settings: SettingsDep) -> Response:
    """Predict one sample (+ class probabilities for classification)."""
    started = time.perf_counter()
    _stateless(handle)
    body = await bodies.read_json(request)
    later = None if _plain(body) else label_bodies.predict_sample(body, "body")
    sample = [later.x] if later is not None else bodies.sample_fields(body, _FIELDS)
    xs, _ = await bodies.check_samples(handle.model.learner, [sample], with_y=False, batch=False)
    await handle.readable(settings.FOLLOWER_STALENESS_SECONDS)
    step, prediction = await _run(handle, handle.model.predict_one, xs[0])
    if later is not None:
        await _keep(handle, settings, request.app.state.telemetry, [later], step, [prediction])
    handle.model.predict_latency.record(time.perf_counter() - started)
    return json_response(200, {**_answer(prediction, later), "step": step})


@router.post(
    "/predict/batch",
    response_model=PredictBatchResponse,
    responses=_RESPONSES,
    openapi_extra=json_body(PredictBatchRequest, PREDICT_BATCH_EXAMPLES),
)
async def predict_batch(handle: ModelDep, request: Request, settings: SettingsDep) -> Response:
    """Predict many samples in one eval-mode forward pass."""
    started = time.perf_counter()
    _stateless(handle)
    body = await bodies.read_json(request)
    later = None
    if _later_batch(body):
        later = label_bodies.predict_samples(body, settings.MAX_BATCH_SAMPLES)
        samples = [[s.x] for s in later]
    else:
        samples = bodies.batch_fields(body, _FIELDS, settings.MAX_BATCH_SAMPLES)
    xs, _ = await bodies.check_samples(handle.model.learner, samples, with_y=False, batch=True)
    await handle.readable(settings.FOLLOWER_STALENESS_SECONDS)
    step, predictions = await _run(handle, handle.model.predict, xs)
    if later is not None:
        await _keep(handle, settings, request.app.state.telemetry, later, step, predictions)
    handle.model.predict_latency.record(time.perf_counter() - started)
    answers = [_answer(p, later[i] if later else None) for i, p in enumerate(predictions)]
    return json_response(200, {"step": step, "predictions": answers})


def _later_batch(body: Any) -> bool:
    """Does any sample of a predict/batch body carry the delayed-label fields?"""
    samples = body.get("samples") if isinstance(body, dict) else None
    return isinstance(samples, list) and any(isinstance(s, dict) and not _plain(s) for s in samples)
