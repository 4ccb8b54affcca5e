"""Labels that arrive after the prediction: learn from the input that was served.

A predict with ``label_later`` kept its input and answer in Redis (see
:mod:`service.store.pending`). A label turns into a learn entry of the model's log,
checked and marked labelled atomically inside Redis, then applied by the owner like any
learn: one step per label, in arrival order, scored against the served prediction.
A stateful rnn's steps made with ``label_later`` wait in the model itself (their windows
are there): their labels go into the log as they are, and the writer checks them
(:mod:`service.stream_labels`).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from model.learner import InvalidSampleError
from service.api import bodies, label_bodies
from service.api.deps import ModelDep, SettingsDep, WriteAccess
from service.api.label_schemas import (
    LABEL_EXAMPLES,
    LabelBatchRequest,
    LabelBatchResponse,
    LabelRequest,
    LabelResponse,
)
from service.api.routes.learn import IdempotencyKey, outcome_or_raise, replay_headers, result_json
from service.api.schemas import ErrorBody, NonFiniteBody, json_body
from service.errors import ConflictError, InvalidInputError, NotFoundError, json_response
from service.label_telemetry import label_telemetry
from service.registry import ModelHandle
from service.store import log
from service.store.pending import LabelRefusedError
from service.writer import LearnJob

router = APIRouter(prefix="/v1/models/{name}", tags=["labels"], dependencies=[WriteAccess])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or invalid API key"},
    403: {"model": ErrorBody, "description": "read-only API key"},
    404: {"model": ErrorBody, "description": "no such model, or an unknown or expired prediction_id"},
    409: {"model": ErrorBody, "description": "a prediction was labelled already (nothing was applied)"},
    413: {"model": ErrorBody, "description": "more labels than a batch may hold; nothing was applied"},
    422: {
        "model": NonFiniteBody,
        "description": "invalid body or y (nothing applied), or a non-finite step (rolled back)",
    },
    503: {"model": ErrorBody, "description": "Redis unreachable: not logged, so not applied; safe to retry"},
    504: {"model": ErrorBody, "description": "logged, but not applied in time: retry with the same key"},
}
_BODY = json_body(LabelRequest, LABEL_EXAMPLES)
_BODY["requestBody"]["content"]["application/json"]["schema"] = {
    "oneOf": [LabelRequest.model_json_schema(), LabelBatchRequest.model_json_schema()]
}


def _refused(exc: LabelRefusedError, ids: list[str], name: str, batch: bool) -> Exception:
    where = f"labels[{exc.index}]: " if batch else ""
    pid = ids[exc.index]
    if exc.why == "labelled":
        return ConflictError(f"{where}prediction {pid!r} was labelled already; nothing was applied")
    if exc.why == "duplicate":
        return ConflictError(f"{where}prediction {pid!r} is labelled twice in one request; nothing applied")
    if exc.why == "expired":
        state = "expired (it waited longer than ONLINENORM_LABEL_TTL_SECONDS)"
    else:
        state = "unknown (not made with label_later, evicted, or expired and forgotten)"
    return NotFoundError(f"{where}prediction {pid!r} of model {name!r} is {state}; nothing was applied")


@router.post(
    "/labels",
    responses=_RESPONSES,
    response_model=LabelResponse | LabelBatchResponse,
    openapi_extra=_BODY,
)
async def post_labels(
    handle: ModelDep, request: Request, settings: SettingsDep, idempotency_key: IdempotencyKey = None
) -> Response:
    """Learn from predictions made with ``label_later``: ``{"prediction_id", "y"}``
    answers ``{"step", "loss", "prediction"}`` (the prediction that was served);
    ``{"labels": [...]}`` answers ``{"step", "results": [...]}``, one step per label, in order."""
    started = time.perf_counter()
    key = bodies.idempotency_key(idempotency_key)
    items, batch = label_bodies.labels(await bodies.read_json(request), settings.MAX_BATCH_SAMPLES)
    learner = handle.model.learner
    for i, item in enumerate(items):
        try:
            learner.check_y(item.y)
        except InvalidSampleError as exc:
            raise InvalidInputError(f"labels[{i}]: {exc}" if batch else str(exc)) from None
    if handle.model.streams is not None:
        return await _stream_labels(
            handle, request, [[i.prediction_id, i.y] for i in items], key, batch, started
        )
    ids = [item.prediction_id for item in items]
    request_json = orjson.dumps([[item.prediction_id, item.y] for item in items])
    remote = handle.remote
    try:
        answer = await remote.labels(
            "labels" if batch else "label",
            [(item.prediction_id, orjson.dumps(item.y)) for item in items],
            request_json,
            key,
            settings.LABEL_TTL_SECONDS,
            lambda taken: label_telemetry(request.app.state.telemetry).observe(handle.name, taken.change),
        )
    except LabelRefusedError as exc:
        raise _refused(exc, ids, handle.name, batch) from None
    if answer.error is not None:
        raise answer.error
    outcome = outcome_or_raise(answer, batch=batch)
    handle.model.learn_latency.record(time.perf_counter() - started)
    if batch:
        results = [result_json(r) for r in outcome.results]
        return json_response(200, {"step": outcome.step, "results": results}, replay_headers(answer))
    return json_response(200, result_json(outcome.results[0]), replay_headers(answer))


async def _stream_labels(
    handle: ModelHandle,
    request: Request,
    labels: list[list[Any]],
    key: str | None,
    batch: bool,
    started: float,
) -> Response:
    """Labels of a stateful rnn's steps: one log entry, which the writer checks against the
    steps that wait (:mod:`service.stream_labels`) and learns from their windows."""
    kind = "stream_labels" if batch else "stream_label"
    job = LearnJob(kind, labels, [None] * len(labels), orjson.dumps(labels), key, log.new_req())
    answer = await handle.submit(job)
    if answer.error is not None:
        raise answer.error
    outcome = outcome_or_raise(answer, batch=batch)
    if outcome.labels is not None:
        label_telemetry(request.app.state.telemetry).observe_entry(handle.name, outcome.labels)
    handle.model.learn_latency.record(time.perf_counter() - started)
    if batch:
        results = [result_json(r) for r in outcome.results]
        return json_response(200, {"step": outcome.step, "results": results}, replay_headers(answer))
    return json_response(200, result_json(outcome.results[0]), replay_headers(answer))
