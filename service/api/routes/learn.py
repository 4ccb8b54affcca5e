"""Learn: one optimizer step per sample, in arrival order, logged before it is applied."""

from __future__ import annotations

import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Request
from starlette.responses import Response

from service.api import bodies
from service.api.deps import ModelDep, SettingsDep, WriteAccess
from service.api.schemas import (
    LEARN_BATCH_EXAMPLES,
    LEARN_EXAMPLES,
    ErrorBody,
    LearnBatchRequest,
    LearnBatchResponse,
    LearnRequest,
    LearnResponse,
    NonFiniteBody,
    json_body,
)
from service.errors import NonFiniteStepRejected, json_response
from service.live import Outcome
from service.registry import ModelHandle
from service.writer import Answer, LearnJob

router = APIRouter(prefix="/v1/models/{name}", tags=["learn"], dependencies=[WriteAccess])

_FIELDS = ("x", "y")
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="optional, unique per request: a retry with the same key is answered with the "
        "original result (header Idempotent-Replayed: true) instead of being applied twice",
    ),
]
_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or invalid API key"},
    403: {"model": ErrorBody, "description": "read-only API key"},
    404: {"model": ErrorBody, "description": "no such model"},
    413: {"model": ErrorBody, "description": "body or batch over the limit; nothing was applied"},
    422: {
        "model": NonFiniteBody,
        "description": "invalid body or sample (nothing applied), or a non-finite step (rolled back)",
    },
    503: {"model": ErrorBody, "description": "Redis unreachable: not logged, so not applied; safe to retry"},
}


def _result(r: Any) -> dict[str, Any]:
    return {"step": r.step, "loss": r.loss, "prediction": r.prediction}


def _headers(answer: Answer) -> dict[str, str] | None:
    return {"Idempotent-Replayed": "true"} if answer.replayed else None


def _raise_if_rolled_back(outcome: Outcome, batch: bool) -> None:
    if outcome.error is None:
        return
    extra: dict[str, Any] = {"step": outcome.step}
    if batch:
        extra["index"] = outcome.failed_index
        extra["results"] = [_result(r) for r in outcome.results]
        detail = f"{outcome.error}; samples before it were applied, it and those after it were not"
    else:
        detail = f"{outcome.error}; the model is unchanged"
    raise NonFiniteStepRejected(detail, **extra)


async def _submit(
    handle: ModelHandle, kind: str, samples: list[list[Any]], batch: bool, key: str | None
) -> Answer:
    key = bodies.idempotency_key(key)
    xs, ys = await bodies.check_samples(handle.model.learner, samples, with_y=True, batch=batch)
    job = LearnJob(kind, xs, ys, orjson.dumps(samples), key)
    return await handle.writer.submit(job)


@router.post(
    "/learn",
    response_model=LearnResponse,
    responses=_RESPONSES,
    openapi_extra=json_body(LearnRequest, LEARN_EXAMPLES),
)
async def learn_sample(
    handle: ModelDep, request: Request, idempotency_key: IdempotencyKey = None
) -> Response:
    """Learn one sample: answers the loss and the prediction made before the update."""
    started = time.perf_counter()
    sample = bodies.sample_fields(await bodies.read_json(request), _FIELDS)
    answer = await _submit(handle, "one", [sample], False, idempotency_key)
    _raise_if_rolled_back(answer.outcome, batch=False)
    handle.model.learn_latency.record(time.perf_counter() - started)
    return json_response(200, _result(answer.outcome.results[0]), _headers(answer))


@router.post(
    "/learn/batch",
    response_model=LearnBatchResponse,
    responses=_RESPONSES,
    openapi_extra=json_body(LearnBatchRequest, LEARN_BATCH_EXAMPLES),
)
async def learn_batch(
    handle: ModelDep, request: Request, settings: SettingsDep, idempotency_key: IdempotencyKey = None
) -> Response:
    """Learn many samples, one optimizer step each, in order, as one uninterrupted run."""
    started = time.perf_counter()
    body = await bodies.read_json(request)
    samples = bodies.batch_fields(body, _FIELDS, settings.MAX_BATCH_SAMPLES)
    answer = await _submit(handle, "batch", samples, True, idempotency_key)
    _raise_if_rolled_back(answer.outcome, batch=True)
    handle.model.learn_latency.record(time.perf_counter() - started)
    outcome = answer.outcome
    return json_response(
        200, {"step": outcome.step, "results": [_result(r) for r in outcome.results]}, _headers(answer)
    )
