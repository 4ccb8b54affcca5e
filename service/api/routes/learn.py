"""Learn: one optimizer step per sample, in arrival order, logged before it is applied."""

from __future__ import annotations

import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Request
from starlette.responses import Response

from service.answers import Answer
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
from service.errors import InvalidInputError, NonFiniteStepRejected, json_response
from service.live import Outcome
from service.registry import ModelHandle
from service.store import log
from service.writer import LearnJob

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
    409: {"model": ErrorBody, "description": "the model could not be recovered (DELETE it)"},
    503: {"model": ErrorBody, "description": "Redis unreachable: not logged, so not applied; safe to retry"},
    504: {
        "model": ErrorBody,
        "description": "logged, but its owner did not apply it in time (one is being replaced): it will "
        "be applied; retry with the same Idempotency-Key for its answer",
    },
}


STATEFUL_LEARN = (
    "this model is a stateful rnn: it learns one time step of a stream at a time, through "
    "POST .../streams/{stream}/step or .../streams/batch"
)


def result_json(r: Any) -> dict[str, Any]:
    return {"step": r.step, "loss": r.loss, "prediction": r.prediction}


def replay_headers(answer: Answer) -> dict[str, str] | None:
    return {"Idempotent-Replayed": "true"} if answer.replayed else None


def outcome_or_raise(answer: Answer, batch: bool) -> Outcome:
    """The applied outcome, or the 422 of a rolled-back step."""
    outcome = answer.outcome
    assert outcome is not None
    if outcome.error is None:
        return outcome
    extra: dict[str, Any] = {"step": outcome.step}
    if batch:
        extra["index"] = outcome.failed_index
        extra["results"] = [result_json(r) for r in outcome.results]
        detail = f"{outcome.error}; samples before it were applied, it and those after it were not"
    else:
        detail = f"{outcome.error}; the model is unchanged"
    raise NonFiniteStepRejected(detail, **extra)


async def _submit(
    handle: ModelHandle, kind: str, samples: list[list[Any]], batch: bool, key: str | None, raw: bytes
) -> Answer:
    """Validate here, then have the owner apply it (this replica, or another through the log)."""
    key = bodies.idempotency_key(key)
    if handle.model.streams is not None:
        raise InvalidInputError(STATEFUL_LEARN)
    xs, ys = await bodies.check_samples(handle.model.learner, samples, with_y=True, batch=batch, raw=raw)
    job = LearnJob(kind, xs, ys, orjson.dumps(samples), key, log.new_req())
    answer = await handle.submit(job)
    if answer.error is not None:
        raise answer.error
    return answer


async def learn_body(
    handle: ModelHandle, raw: bytes, key: str | None, batch: bool, max_samples: int
) -> tuple[dict[str, Any], dict[str, str] | None]:
    """A learn request's body (``raw``) logged, applied and answered: the answer's JSON
    and headers. Both the routes below and the hot path (:mod:`service.api.hot`) call it."""
    started = time.perf_counter()
    body = bodies.parse_json(raw)
    if batch:
        samples = bodies.batch_fields(body, _FIELDS, max_samples)
    else:
        samples = [bodies.sample_fields(body, _FIELDS)]
    answer = await _submit(handle, "batch" if batch else "one", samples, batch, key, raw)
    outcome = outcome_or_raise(answer, batch=batch)
    handle.model.learn_latency.record(time.perf_counter() - started)
    if batch:
        results = [result_json(r) for r in outcome.results]
        return {"step": outcome.step, "results": results}, replay_headers(answer)
    return result_json(outcome.results[0]), replay_headers(answer)


# Requests to these two routes are served by service.api.hot, in front of FastAPI; the
# routes stay for the OpenAPI schema (and serve any request that does not take it).
@router.post(
    "/learn",
    response_model=LearnResponse,
    responses=_RESPONSES,
    openapi_extra=json_body(LearnRequest, LEARN_EXAMPLES),
)
async def learn_sample(
    handle: ModelDep, request: Request, settings: SettingsDep, idempotency_key: IdempotencyKey = None
) -> Response:
    """Learn one sample: answers the loss and the prediction made before the update."""
    raw = await request.body()
    body, headers = await learn_body(handle, raw, idempotency_key, False, settings.MAX_BATCH_SAMPLES)
    return json_response(200, body, headers)


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
    raw = await request.body()
    body, headers = await learn_body(handle, raw, idempotency_key, True, settings.MAX_BATCH_SAMPLES)
    return json_response(200, body, headers)
