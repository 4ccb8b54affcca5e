"""Stateful rnn streams: one time step per call, a hidden state per stream.

A step is logged and applied by the model's single writer like a learn (group commit,
replay, Idempotency-Key): it advances the stream's hidden state with ``x``, predicts
from it and, with ``y``, learns by truncated BPTT over the stream's last ``bptt``
steps. The streams' states are part of the model's snapshots, so a stream continues
exactly where it was after a restart or a failover. Resetting a stream goes through
the log too; reads (a stream's position, the list) are served by any replica.

A step without ``y`` may take ``label_later`` (or a ``prediction_id``): its window is
kept with the prediction it served until ``POST .../labels`` brings the label, which
learns from that window (:mod:`service.stream_labels`).
"""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from model.learner import InvalidSampleError, OnlineLearner
from model.spec import NAME_PATTERN
from service.answers import Answer
from service.api import bodies, label_bodies
from service.api.deps import ModelDep, ReadAccess, SettingsDep, WriteAccess
from service.api.routes.learn import IdempotencyKey, replay_headers
from service.api.schemas import PREDICTION_ID_PATTERN, ErrorBody, NonFiniteBody, Number, PredictionValue
from service.errors import (
    InvalidInputError,
    NonFiniteStepRejected,
    NotFoundError,
    PayloadTooLargeError,
    json_response,
)
from service.label_telemetry import label_telemetry
from service.live import Outcome
from service.registry import ModelHandle
from service.store import log
from service.writer import LearnJob

router = APIRouter(prefix="/v1/models/{name}/streams", tags=["streams"])

_STREAM_RE = re.compile(NAME_PATTERN)
StreamId = Annotated[str, Path(pattern=NAME_PATTERN, description="the stream: model-name rules")]
_STEP_FIELDS = ("x", "y", "label_later", "prediction_id")
_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or invalid API key"},
    403: {"model": ErrorBody, "description": "read-only API key"},
    404: {"model": ErrorBody, "description": "no such model (or stream)"},
    409: {
        "model": ErrorBody,
        "description": "a prediction_id used already (or twice in the batch): nothing was applied",
    },
    413: {"model": ErrorBody, "description": "more steps than a batch may hold; nothing was applied"},
    422: {
        "model": NonFiniteBody,
        "description": "invalid body, stream id or sample, a model that is not a stateful rnn (nothing "
        "applied), or a non-finite step (rolled back: its stream is unchanged)",
    },
    503: {"model": ErrorBody, "description": "Redis unreachable: not logged, so not applied; safe to retry"},
    504: {"model": ErrorBody, "description": "logged, but not applied in time: retry with the same key"},
}


class StepRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    x: list[Number] = Field(description="one time step: input_shape [F] numbers")
    y: Number | list[Number] | None = Field(None, description="its label: learn by truncated BPTT")
    label_later: bool = Field(
        False,
        description="without y: keep this step's window until its label is posted to "
        "POST /v1/models/{name}/labels; the answer carries its prediction_id",
    )
    prediction_id: str | None = Field(
        None,
        pattern=PREDICTION_ID_PATTERN,
        description="label_later under the client's own id (unique per model)",
    )


class StreamStep(StepRequest):
    stream: str = Field(pattern=NAME_PATTERN)


class StepsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: list[StreamStep] = Field(min_length=1, description="applied in order, streams mixed")


class StepResponse(BaseModel):
    stream: str
    t: int = Field(description="the step's position in its stream (0: its first)")
    prediction: PredictionValue = Field(description="from the hidden state after x, before learning")
    probabilities: list[float] | None = Field(None, description="classification only")
    loss: float | None = Field(None, description="with y: the loss of the update")
    step: int = Field(description="the model's optimizer steps after this one")
    prediction_id: str | None = Field(None, description="label_later: the id to label it by")


class StepsResponse(BaseModel):
    step: int
    results: list[StepResponse]


class StreamInfo(BaseModel):
    stream: str | None = None
    t: int = Field(description="steps the stream has seen")
    updated_at: dt.datetime = Field(description="the log time of its last step")


class StreamList(BaseModel):
    streams: list[StreamInfo]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null: the last page")


def _body(model: type[BaseModel], summary: str, example: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": model.model_json_schema(),
                    "examples": {"example": {"summary": summary, "value": example}},
                }
            },
        }
    }


def _stateful(handle: ModelHandle) -> OnlineLearner:
    learner = handle.model.learner
    if handle.model.streams is None:
        raise InvalidInputError(
            f"model {handle.name!r} is not a stateful rnn: streams need "
            '{"network": {"kind": "rnn", "stateful": true}} and input_shape [F]'
        )
    return learner


def _step(learner: OnlineLearner, value: Any, where: str, stream: str | None) -> list[Any]:
    """One step checked against the spec: ``[stream, x, y or None]`` as logged."""
    if not isinstance(value, dict):
        raise InvalidInputError(f"{where} must be a JSON object (got {type(value).__name__})")
    allowed = _STEP_FIELDS if stream is not None else ("stream", *_STEP_FIELDS)
    for field in value:
        if field not in allowed:
            raise InvalidInputError(f"{where} has an unknown field {field!r} (expected {', '.join(allowed)})")
    if stream is None:
        stream = value.get("stream")
        if not isinstance(stream, str) or not _STREAM_RE.match(stream):
            raise InvalidInputError(f"{where}.stream must match {NAME_PATTERN} (got {stream!r})")
    if "x" not in value:
        raise InvalidInputError(f"{where} is missing 'x'")
    x, y = value["x"], value.get("y")
    pid = _prediction_id(value, where)
    if pid is not None and y is not None:
        raise InvalidInputError(f"{where}: label_later (or a prediction_id) is for a step without y")
    try:
        learner.check_x(x)
        if y is not None:
            learner.check_y(y)
    except InvalidSampleError as exc:
        raise InvalidInputError(f"{where}: {exc}" if where != "body" else str(exc)) from None
    return [stream, x, y] if pid is None else [stream, x, None, pid]


def _prediction_id(value: dict[str, Any], where: str) -> str | None:
    """The id a step waits for its label under (a client's implies label_later), or None."""
    later = value.get("label_later", False)
    if not isinstance(later, bool):
        raise InvalidInputError(f"{where}.label_later must be true or false (got {later!r})")
    given = value.get("prediction_id")
    if given is not None:
        return label_bodies.prediction_id(given, where)
    return label_bodies.new_prediction_id() if later else None


def _result(r: Any, extra: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"stream": extra["stream"], "t": extra["t"], "prediction": r.prediction}
    if "probabilities" in extra:
        out["probabilities"] = extra["probabilities"]
    if r.loss is not None:
        out["loss"] = r.loss
    out["step"] = r.step
    if "prediction_id" in extra:
        out["prediction_id"] = extra["prediction_id"]
    return out


def _results(outcome: Outcome) -> list[dict[str, Any]]:
    return [_result(r, e) for r, e in zip(outcome.results, outcome.extras or [], strict=True)]


def _answered(answer: Answer, batch: bool, request: Request, name: str) -> Outcome:
    if answer.error is not None:
        raise answer.error
    outcome = answer.outcome
    assert outcome is not None
    if outcome.labels is not None:
        label_telemetry(request.app.state.telemetry).observe_entry(name, outcome.labels)
    if outcome.error is None:
        return outcome
    extra: dict[str, Any] = {"step": outcome.step}
    if batch:
        extra["index"] = outcome.failed_index
        extra["results"] = _results(outcome)
        detail = f"{outcome.error}; steps before it were applied, it and those after it were not"
    else:
        detail = f"{outcome.error}; the model and the stream are unchanged"
    raise NonFiniteStepRejected(detail, **extra)


async def _submit(handle: ModelHandle, kind: str, steps: list[list[Any]], key: str | None) -> Answer:
    job = LearnJob(kind, steps, [None] * len(steps), orjson.dumps(steps), key, log.new_req())
    return await handle.submit(job)


@router.post(
    "/{stream}/step",
    response_model=StepResponse,
    responses=_RESPONSES,
    dependencies=[WriteAccess],
    openapi_extra=_body(StepRequest, "one time step, with its label", {"x": [0.3, -1.2], "y": 1}),
)
async def stream_step(
    handle: ModelDep, stream: StreamId, request: Request, idempotency_key: IdempotencyKey = None
) -> Response:
    """One time step of ``stream``: advance its hidden state with ``x``, predict, and
    learn when ``y`` is given (truncated BPTT over the stream's last ``bptt`` steps)."""
    started = time.perf_counter()
    learner = _stateful(handle)
    key = bodies.idempotency_key(idempotency_key)
    step = _step(learner, await bodies.read_json(request), "body", stream)
    answer = await _submit(handle, "stream", [step], key)
    outcome = _answered(answer, False, request, handle.name)
    handle.model.learn_latency.record(time.perf_counter() - started)
    return json_response(200, _results(outcome)[0], replay_headers(answer))


@router.post(
    "/batch",
    response_model=StepsResponse,
    responses=_RESPONSES,
    dependencies=[WriteAccess],
    openapi_extra=_body(
        StepsRequest,
        "steps of two streams, in order",
        {"steps": [{"stream": "dev-1", "x": [0.3, -1.2], "y": 1}, {"stream": "dev-2", "x": [1.0, 0.0]}]},
    ),
)
async def stream_steps(
    handle: ModelDep, request: Request, settings: SettingsDep, idempotency_key: IdempotencyKey = None
) -> Response:
    """Many steps, in order, streams mixed: as many ``step`` calls, applied as one run."""
    started = time.perf_counter()
    learner = _stateful(handle)
    key = bodies.idempotency_key(idempotency_key)
    body = await bodies.read_json(request)
    if not isinstance(body, dict) or set(body) != {"steps"}:
        raise InvalidInputError("body must be a JSON object with 'steps' only")
    items = body["steps"]
    if not isinstance(items, list) or not items:
        raise InvalidInputError("'steps' must be a non-empty list")
    if len(items) > settings.MAX_BATCH_SAMPLES:
        raise PayloadTooLargeError(
            f"{len(items)} steps in one batch; the limit is {settings.MAX_BATCH_SAMPLES}"
        )
    steps = [_step(learner, item, f"steps[{i}]", None) for i, item in enumerate(items)]
    answer = await _submit(handle, "streams", steps, key)
    outcome = _answered(answer, True, request, handle.name)
    handle.model.learn_latency.record(time.perf_counter() - started)
    return json_response(200, {"step": outcome.step, "results": _results(outcome)}, replay_headers(answer))


def _info(name: str, live: Any) -> dict[str, Any]:
    updated = dt.datetime.fromtimestamp(live.updated_ms / 1000.0, tz=dt.timezone.utc)
    return {"stream": name, "t": live.state.t, "updated_at": updated.isoformat()}


@router.get("/{stream}", response_model=StreamInfo, responses=_RESPONSES, dependencies=[ReadAccess])
async def stream_info(handle: ModelDep, stream: StreamId, settings: SettingsDep) -> Response:
    """A live stream's position (steps seen) and the time of its last step."""
    _stateful(handle)
    await handle.readable(settings.FOLLOWER_STALENESS_SECONDS)
    _, live = handle.model.stream_info(stream)
    if live is None:
        raise NotFoundError(f"model {handle.name!r} has no live stream {stream!r}")
    info = _info(stream, live)
    del info["stream"]
    return json_response(200, info)


@router.delete("/{stream}", status_code=204, responses=_RESPONSES, dependencies=[WriteAccess])
async def reset_stream(handle: ModelDep, stream: StreamId) -> Response:
    """Forget the stream's hidden state and window (through the log): its next step
    starts afresh. The model's weights and statistics are unchanged."""
    _stateful(handle)
    answer = await _submit(handle, "stream_reset", [[stream]], None)
    if answer.error is not None:
        raise answer.error
    return Response(status_code=204)


@router.get("", response_model=StreamList, responses=_RESPONSES, dependencies=[ReadAccess])
async def list_streams(
    handle: ModelDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="streams per page")] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> Response:
    """The live streams, in id order, a page at a time."""
    _stateful(handle)
    await handle.readable(settings.FOLLOWER_STALENESS_SECONDS)
    page, next_cursor = handle.model.stream_page(cursor, limit)
    return json_response(200, {"streams": [_info(n, live) for n, live in page], "next_cursor": next_cursor})
