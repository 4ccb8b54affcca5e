"""The blocking client: :class:`BaseClient`'s calls sent with ``httpx.Client``."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from clients._base import BaseClient, Call
from clients._convert import iter_chunks, iter_sample_chunks
from clients.errors import APIConnectionError
from clients.types import (
    Health,
    LearnBatchResult,
    LearnResult,
    Metrics,
    ModelInfo,
    Prediction,
    Replica,
    Stats,
    StreamInfo,
    StreamResult,
)

T = TypeVar("T")


class Client(BaseClient):
    """Talk to an onlinenorm service.

    >>> with Client("http://127.0.0.1:8000") as client:  # doctest: +SKIP
    ...     client.create_model(name="digits", task="classification", input_shape=[64], num_classes=10)
    ...     client.learn_one("digits", x, 3).prediction
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        http_client: httpx.Client | None = None,
        **options: Any,
    ) -> None:
        """``options`` are :class:`BaseClient`'s (timeout, max_retries, retry_policy,
        batch_size, retry_learns, headers); ``transport`` or ``http_client`` replace the
        network (tests use ``httpx.MockTransport``)."""
        super().__init__(base_url, api_key, **options)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(transport=transport)
        self._sleep = time.sleep  # tests replace it

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _request(self, call: Call[T]) -> T:
        """Send ``call``, retrying as :meth:`BaseClient._retry_delay` allows."""
        request = self._http.build_request(**self._request_args(call))
        retries = 0
        while True:
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                delay = self._retry_delay(call, retries, error=exc)
                if delay is None:
                    raise self._connection_error(call, exc) from exc
            else:
                delay = None if response.is_success else self._retry_delay(call, retries, response=response)
                if delay is None:
                    return self._answer(call, response)
                response.close()
            retries += 1
            self._sleep(delay)

    # ------------------------------------------------------------------- models
    def create_model(self, spec: Mapping[str, Any] | BaseModel | None = None, /, **fields: Any) -> ModelInfo:
        """Create a model from a spec (a dict, or keyword fields on top of it). 409 if it exists."""
        return self._request(self._create_model_call(spec, fields))

    def list_models(self) -> list[ModelInfo]:
        return self._request(self._list_models_call())

    def get_model(self, name: str) -> ModelInfo:
        return self._request(self._get_model_call(name))

    def delete_model(self, name: str) -> None:
        """Delete the model and all its state. Not retried after an ambiguous failure."""
        self._request(self._delete_model_call(name))

    # ----------------------------------------------------------------- learning
    def learn_one(self, name: str, x: Any, y: Any, *, idempotency_key: str | None = None) -> LearnResult:
        """One training step on ``(x, y)``; the answer holds the prediction made before it."""
        return self._request(self._learn_one_call(name, x, y, idempotency_key))

    def iter_learn_many(
        self, name: str, xs: Iterable[Any], ys: Iterable[Any], *, batch_size: int | None = None
    ) -> Iterator[LearnBatchResult]:
        """Stream ``(x, y)`` pairs in ``learn/batch`` requests of ``batch_size``, yielding
        each batch's answer as it comes (for progress bars). Lazy over generators."""
        for samples in iter_sample_chunks(xs, ys, batch_size or self.batch_size):
            yield self._request(self._learn_batch_call(name, samples))

    def learn_many(
        self, name: str, xs: Iterable[Any], ys: Iterable[Any], *, batch_size: int | None = None
    ) -> list[LearnResult]:
        """One step per sample, in order, however many samples. A failed batch raises;
        the batches before it stay applied (:meth:`iter_learn_many` shows them)."""
        return [
            r for batch in self.iter_learn_many(name, xs, ys, batch_size=batch_size) for r in batch.results
        ]

    # --------------------------------------------------------------- prediction
    def predict_one(
        self, name: str, x: Any, *, label_later: bool = False, prediction_id: str | None = None
    ) -> Prediction:
        """Eval-mode prediction. With ``label_later`` (or your own ``prediction_id``) the
        service keeps it until :meth:`label` brings its label: the answer's
        ``prediction_id`` says which."""
        return self._request(self._predict_one_call(name, x, label_later, prediction_id))

    def predict_many(
        self, name: str, xs: Iterable[Any], *, batch_size: int | None = None, label_later: bool = False
    ) -> list[Prediction]:
        return [
            p
            for chunk in iter_chunks(xs, batch_size or self.batch_size)
            for p in self._request(self._predict_batch_call(name, chunk, label_later))
        ]

    # ------------------------------------------------------------ delayed labels
    def label(
        self, name: str, prediction_id: str, y: Any, *, idempotency_key: str | None = None
    ) -> LearnResult:
        """Learn from a ``label_later`` prediction's stored input: one step; the answer's
        ``prediction`` is the one served then. 404: unknown or expired id; 409: labelled."""
        return self._request(self._label_call(name, prediction_id, y, idempotency_key))

    def label_many(
        self,
        name: str,
        labels: Iterable[tuple[str, Any]] | Mapping[str, Any],
        *,
        batch_size: int | None = None,
    ) -> list[LearnResult]:
        """``(prediction_id, y)`` pairs (or a mapping), one step each, in order, in
        requests of ``batch_size``. A refused batch raises; the batches before it stay applied."""
        pairs = labels.items() if isinstance(labels, Mapping) else labels
        out: list[LearnResult] = []
        for chunk in iter_chunks(pairs, batch_size or self.batch_size):
            out.extend(self._request(self._labels_call(name, [(p, y) for p, y in chunk])).results)
        return out

    # ------------------------------------------------------------------ streams
    def stream_step(
        self,
        name: str,
        stream: str,
        x: Any,
        y: Any = None,
        *,
        label_later: bool = False,
        prediction_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> StreamResult:
        """One time step of ``stream`` (a stateful rnn model): advances its hidden state,
        predicts, and learns when ``y`` is given. Without ``y``, ``label_later`` (or your
        own ``prediction_id``) keeps the step's window until :meth:`label` brings its
        label: the answer's ``prediction_id`` says which."""
        return self._request(
            self._stream_step_call(name, stream, x, y, label_later, prediction_id, idempotency_key)
        )

    def stream_steps(
        self, name: str, steps: Iterable[Mapping[str, Any]], *, batch_size: int | None = None
    ) -> list[StreamResult]:
        """``{"stream", "x", "y"?, "label_later"?, "prediction_id"?}`` steps of any streams,
        in order, in requests of ``batch_size``."""
        out: list[StreamResult] = []
        for chunk in iter_chunks(steps, batch_size or self.batch_size):
            out.extend(self._request(self._stream_steps_call(name, [dict(s) for s in chunk])).results)
        return out

    def stream_info(self, name: str, stream: str) -> StreamInfo:
        return self._request(self._stream_info_call(name, stream))

    def reset_stream(self, name: str, stream: str) -> None:
        """Forget the stream's hidden state and window: its next step starts afresh."""
        self._request(self._reset_stream_call(name, stream))

    def list_streams(self, name: str, *, page_size: int = 100) -> list[StreamInfo]:
        """Every live stream of the model, page by page."""
        out: list[StreamInfo] = []
        cursor: str | None = None
        while True:
            page, cursor = self._request(self._list_streams_call(name, cursor, page_size))
            out.extend(page)
            if not cursor:
                return out

    # --------------------------------------------------------------- inspection
    def stats(self, name: str) -> Stats:
        return self._request(self._stats_call(name))

    def metrics(self, name: str) -> Metrics:
        return self._request(self._metrics_call(name))

    def replicas(self) -> list[Replica]:
        """The live replicas of the service and the models each owns."""
        return self._request(self._replicas_call())

    def health(self, *, ready: bool = False) -> Health:
        """``/healthz`` (the process answers) or, with ``ready``, ``/readyz`` (Redis too)."""
        return self._request(self._health_call(ready))

    def wait_until_ready(self, timeout: float = 30.0, interval: float = 0.2) -> Health:
        """Poll ``/readyz`` until it answers 2xx; ``APIConnectionError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                health = self.health(ready=True)
                if health.ok:
                    return health
            except APIConnectionError:
                pass
            if time.monotonic() >= deadline:
                raise APIConnectionError(f"{self.base_url} not ready after {timeout:.0f} s")
            self._sleep(interval)
