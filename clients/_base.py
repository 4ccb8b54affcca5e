"""Everything :class:`~clients.Client` and :class:`~clients.AsyncClient` share: the
configuration, how each v1 endpoint's request is built and its answer parsed, and the
retry decisions. The two clients add only the I/O (blocking or awaited)."""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from clients._convert import NonFiniteValueError, check_finite, to_json_value
from clients.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    ValidationError,
    error_for_response,
)
from clients.retry import RetryPolicy
from clients.types import (
    Health,
    LearnBatchResult,
    LearnResult,
    Metrics,
    ModelInfo,
    Prediction,
    Replica,
    Stats,
    StreamBatchResult,
    StreamInfo,
    StreamResult,
)

SDK_VERSION = "0.1.0"
#: Where the service listens unless ``base_url`` or ``$ONLINENORM_URL`` says otherwise.
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
#: Generous read timeout: a batch of 1000 learn steps takes seconds on a busy CPU.
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
#: Samples per ``learn/batch`` or ``predict/batch`` request: the service's default
#: ``ONLINENORM_MAX_BATCH_SAMPLES``.
DEFAULT_BATCH_SIZE = 1000
ENV_URL = "ONLINENORM_URL"
ENV_API_KEY = "ONLINENORM_API_KEY"
IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"

T = TypeVar("T")
L = TypeVar("L", LearnResult, LearnBatchResult, StreamResult, StreamBatchResult)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP exchange: the request to send, how to read its answer, and whether
    sending it again after an ambiguous failure is harmless (``resend_safe``)."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: Any = None
    resend_safe: bool = False
    idempotency_key: str | None = None
    #: False: answer every status with ``parse`` and never retry (health probes).
    check_status: bool = True


def _reader(convert: Callable[[Any], T]) -> Callable[[httpx.Response], T]:
    """Parse a 2xx answer's JSON with ``convert``; a body of the wrong shape is an APIError."""

    def parse(response: httpx.Response) -> T:
        try:
            return convert(response.json())
        except (ValueError, KeyError, TypeError) as exc:  # pydantic's errors are ValueErrors
            raise APIError(
                f"unexpected answer from {response.request.url}: {exc}",
                status_code=response.status_code,
                body=response.text[:500],
                response=response,
            ) from exc

    return parse


def _nothing(response: httpx.Response) -> None:
    return None


def _health(response: httpx.Response) -> Health:
    try:
        body = response.json()
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {"body": body}
    return Health.model_validate({**body, "ok": response.is_success})


def _learned(model: type[L]) -> Callable[[httpx.Response], L]:
    """A learn answer, marked ``replayed`` when the service answered it from its
    Idempotency-Key record (header ``Idempotent-Replayed: true``)."""

    def parse(response: httpx.Response) -> L:
        replayed = response.headers.get(REPLAYED_HEADER, "").lower() == "true"
        return _reader(lambda body: model.model_validate({**body, "replayed": replayed}))(response)

    return parse


def _json(value: Any, field: str) -> Any:
    """``value`` as JSON, refused before sending if it holds a NaN or an infinity (which
    JSON cannot carry): the SDK's :class:`ValidationError`, naming the field."""
    try:
        return check_finite(to_json_value(value), field)
    except NonFiniteValueError as exc:
        raise ValidationError(str(exc)) from None


def _checked_samples(
    samples: list[dict[str, Any]], fields: tuple[str, ...], what: str
) -> list[dict[str, Any]]:
    for i, sample in enumerate(samples):
        for f in fields:
            if f in sample:
                _json(sample[f], f"{what}[{i}].{f}")
    return samples


def _later(label_later: bool, prediction_id: str | None) -> dict[str, Any]:
    if prediction_id is not None:
        return {"prediction_id": prediction_id}
    return {"label_later": True} if label_later else {}


def _spec_body(spec: Mapping[str, Any] | BaseModel | None, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The create body: a spec (dict or pydantic model), with keyword fields on top."""
    if spec is None:
        body: dict[str, Any] = {}
    elif isinstance(spec, BaseModel):
        body = spec.model_dump(mode="json", exclude_none=True)
    else:
        body = dict(spec)
    body.update({k: to_json_value(v) for k, v in fields.items() if v is not None})
    return body


class BaseClient:
    """Configuration and request building shared by both clients."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int | None = None,
        retry_policy: RetryPolicy | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        retry_learns: bool = True,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """``base_url`` and ``api_key`` default to ``$ONLINENORM_URL`` and
        ``$ONLINENORM_API_KEY``. ``retry_learns=False`` never re-sends a learn after an
        ambiguous failure (for a service run with ``ONLINENORM_IDEMPOTENCY_KEYS=0``)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        self.base_url = (base_url or os.environ.get(ENV_URL) or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get(ENV_API_KEY) or None
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        policy = retry_policy or RetryPolicy()
        if max_retries is not None:
            policy = dataclasses.replace(policy, max_retries=max_retries)
        self.retry_policy = policy
        self.batch_size = batch_size
        self.retry_learns = retry_learns
        self._headers = {"Accept": "application/json", "User-Agent": f"onlinenorm-python/{SDK_VERSION}"}
        if self.api_key:
            self._headers["Authorization"] = f"Bearer {self.api_key}"
        self._headers.update(headers or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    # ------------------------------------------------------------ request plumbing
    def _request_args(self, call: Call[Any]) -> dict[str, Any]:
        """Keyword arguments for ``httpx.Client.build_request``: built once per call, so
        every retry sends the same bytes and the same ``Idempotency-Key``."""
        headers = dict(self._headers)
        if call.idempotency_key is not None:
            headers[IDEMPOTENCY_HEADER] = call.idempotency_key
        return {
            "method": call.method,
            "url": self.base_url + call.path,
            "json": call.json,
            "headers": headers,
            "timeout": self.timeout,
        }

    def _retry_delay(
        self,
        call: Call[Any],
        retries_done: int,
        *,
        response: httpx.Response | None = None,
        error: Exception | None = None,
    ) -> float | None:
        """Seconds to wait before trying ``call`` again, or None to give up now."""
        policy = self.retry_policy
        if not call.check_status or retries_done >= policy.max_retries:
            return None
        if response is not None:
            retry = policy.should_retry_status(response.status_code, resend_safe=call.resend_safe)
        else:
            assert error is not None
            retry = policy.should_retry_error(error, resend_safe=call.resend_safe)
        return policy.delay(retries_done, response) if retry else None

    def _answer(self, call: Call[T], response: httpx.Response) -> T:
        if call.check_status and not response.is_success:
            raise error_for_response(response)
        return call.parse(response)

    def _connection_error(self, call: Call[Any], error: httpx.TransportError) -> APIConnectionError:
        what = f"{call.method} {self.base_url}{call.path}"
        if call.idempotency_key is not None and not isinstance(error, httpx.ConnectError):
            what += f" (may have been applied; Idempotency-Key {call.idempotency_key})"
        cls = APITimeoutError if isinstance(error, httpx.TimeoutException) else APIConnectionError
        return cls(f"{what}: {type(error).__name__}: {error}")

    # ----------------------------------------------------------------- endpoints
    @staticmethod
    def _model_path(name: str, suffix: str = "") -> str:
        return f"/v1/models/{quote(name, safe='')}{suffix}"

    def _create_model_call(
        self, spec: Mapping[str, Any] | BaseModel | None, fields: Mapping[str, Any]
    ) -> Call[ModelInfo]:
        return Call("POST", "/v1/models", _reader(ModelInfo.model_validate), json=_spec_body(spec, fields))

    def _list_models_call(self) -> Call[list[ModelInfo]]:
        return Call(
            "GET",
            "/v1/models",
            _reader(lambda body: [ModelInfo.model_validate(m) for m in body["models"]]),
            resend_safe=True,
        )

    def _get_model_call(self, name: str) -> Call[ModelInfo]:
        return Call("GET", self._model_path(name), _reader(ModelInfo.model_validate), resend_safe=True)

    def _delete_model_call(self, name: str) -> Call[None]:
        return Call("DELETE", self._model_path(name), _nothing)

    def _learn_one_call(self, name: str, x: Any, y: Any, idempotency_key: str | None) -> Call[LearnResult]:
        return Call(
            "POST",
            self._model_path(name, "/learn"),
            _learned(LearnResult),
            json={"x": _json(x, "x"), "y": _json(y, "y")},
            resend_safe=self.retry_learns,
            idempotency_key=idempotency_key or str(uuid.uuid4()),
        )

    def _learn_batch_call(self, name: str, samples: list[dict[str, Any]]) -> Call[LearnBatchResult]:
        """``samples`` are already JSON-ready ``{"x", "y"}`` dicts (see ``_convert``)."""
        return Call(
            "POST",
            self._model_path(name, "/learn/batch"),
            _learned(LearnBatchResult),
            json={"samples": _checked_samples(samples, ("x", "y"), "samples")},
            resend_safe=self.retry_learns,
            idempotency_key=str(uuid.uuid4()),
        )

    def _predict_one_call(
        self, name: str, x: Any, label_later: bool = False, prediction_id: str | None = None
    ) -> Call[Prediction]:
        later = _later(label_later, prediction_id)
        return Call(
            "POST",
            self._model_path(name, "/predict"),
            _reader(Prediction.model_validate),
            json={"x": _json(x, "x"), **later},
            # a kept prediction sent twice could keep two (or answer 409 for a client id)
            resend_safe=not later,
        )

    def _predict_batch_call(
        self, name: str, xs: list[Any], label_later: bool = False
    ) -> Call[list[Prediction]]:
        later = _later(label_later, None)
        samples = _checked_samples([{"x": x} for x in xs], ("x",), "xs")
        return Call(
            "POST",
            self._model_path(name, "/predict/batch"),
            _reader(lambda body: [_prediction(p) for p in body["predictions"]]),
            json={"samples": [{**s, **later} for s in samples]},
            resend_safe=not later,
        )

    def _label_call(
        self, name: str, prediction_id: str, y: Any, idempotency_key: str | None
    ) -> Call[LearnResult]:
        return Call(
            "POST",
            self._model_path(name, "/labels"),
            _learned(LearnResult),
            json={"prediction_id": prediction_id, "y": _json(y, "y")},
            resend_safe=self.retry_learns,
            idempotency_key=idempotency_key or str(uuid.uuid4()),
        )

    def _labels_call(self, name: str, labels: list[tuple[str, Any]]) -> Call[LearnBatchResult]:
        body = [{"prediction_id": pid, "y": _json(y, f"labels[{i}].y")} for i, (pid, y) in enumerate(labels)]
        return Call(
            "POST",
            self._model_path(name, "/labels"),
            _learned(LearnBatchResult),
            json={"labels": body},
            resend_safe=self.retry_learns,
            idempotency_key=str(uuid.uuid4()),
        )

    def _stream_step_call(
        self,
        name: str,
        stream: str,
        x: Any,
        y: Any,
        label_later: bool,
        prediction_id: str | None,
        idempotency_key: str | None,
    ) -> Call[StreamResult]:
        body: dict[str, Any] = {"x": _json(x, "x")}
        if y is not None:
            body["y"] = _json(y, "y")
        body.update(_later(label_later, prediction_id))
        return Call(
            "POST",
            self._model_path(name, f"/streams/{quote(stream, safe='')}/step"),
            _learned(StreamResult),
            json=body,
            resend_safe=self.retry_learns,
            idempotency_key=idempotency_key or str(uuid.uuid4()),
        )

    def _stream_steps_call(self, name: str, steps: list[dict[str, Any]]) -> Call[StreamBatchResult]:
        return Call(
            "POST",
            self._model_path(name, "/streams/batch"),
            _learned(StreamBatchResult),
            json={"steps": _checked_samples(steps, ("x", "y"), "steps")},
            resend_safe=self.retry_learns,
            idempotency_key=str(uuid.uuid4()),
        )

    def _stream_info_call(self, name: str, stream: str) -> Call[StreamInfo]:
        return Call(
            "GET",
            self._model_path(name, f"/streams/{quote(stream, safe='')}"),
            _reader(lambda body: StreamInfo.model_validate({"stream": stream, **body})),
            resend_safe=True,
        )

    def _reset_stream_call(self, name: str, stream: str) -> Call[None]:
        return Call("DELETE", self._model_path(name, f"/streams/{quote(stream, safe='')}"), _nothing)

    def _list_streams_call(
        self, name: str, cursor: str | None, limit: int
    ) -> Call[tuple[list[StreamInfo], str | None]]:
        params = f"?limit={limit}" + (f"&cursor={quote(cursor, safe='')}" if cursor else "")
        return Call(
            "GET",
            self._model_path(name, f"/streams{params}"),
            _reader(
                lambda body: (
                    [StreamInfo.model_validate(s) for s in body["streams"]],
                    body.get("next_cursor"),
                )
            ),
            resend_safe=True,
        )

    def _stats_call(self, name: str) -> Call[Stats]:
        return Call("GET", self._model_path(name, "/stats"), _reader(Stats.model_validate), resend_safe=True)

    def _metrics_call(self, name: str) -> Call[Metrics]:
        return Call(
            "GET", self._model_path(name, "/metrics"), _reader(Metrics.model_validate), resend_safe=True
        )

    def _replicas_call(self) -> Call[list[Replica]]:
        return Call(
            "GET",
            "/v1/replicas",
            _reader(lambda body: [Replica.model_validate(r) for r in body["replicas"]]),
            resend_safe=True,
        )

    def _health_call(self, ready: bool) -> Call[Health]:
        path = "/readyz" if ready else "/healthz"
        return Call("GET", path, _health, resend_safe=True, check_status=False)


def _prediction(item: Any) -> Prediction:
    """An item of ``predictions``: an object, or a bare value."""
    return Prediction.model_validate(item if isinstance(item, dict) else {"prediction": item})
