"""The asyncio client: :class:`BaseClient`'s calls sent with ``httpx.AsyncClient``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Mapping
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


class AsyncClient(BaseClient):
    """:class:`~clients.Client` with every method awaited."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
        **options: Any,
    ) -> None:
        super().__init__(base_url, api_key, **options)
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(transport=transport)
        self._sleep = asyncio.sleep  # tests replace it

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _request(self, call: Call[T]) -> T:
        """Send ``call``, retrying as :meth:`BaseClient._retry_delay` allows."""
        request = self._http.build_request(**self._request_args(call))
        retries = 0
        while True:
            try:
                response = await self._http.send(request)
            except httpx.TransportError as exc:
                delay = self._retry_delay(call, retries, error=exc)
                if delay is None:
                    raise self._connection_error(call, exc) from exc
            else:
                delay = None if response.is_success else self._retry_delay(call, retries, response=response)
                if delay is None:
                    return self._answer(call, response)
                await response.aclose()
            retries += 1
            await self._sleep(delay)

    # ------------------------------------------------------------------- models
    async def create_model(
        self, spec: Mapping[str, Any] | BaseModel | None = None, /, **fields: Any
    ) -> ModelInfo:
        return await self._request(self._create_model_call(spec, fields))

    async def list_models(self) -> list[ModelInfo]:
        return await self._request(self._list_models_call())

    async def get_model(self, name: str) -> ModelInfo:
        return await self._request(self._get_model_call(name))

    async def delete_model(self, name: str) -> None:
        await self._request(self._delete_model_call(name))

    # ----------------------------------------------------------------- learning
    async def learn_one(
        self, name: str, x: Any, y: Any, *, idempotency_key: str | None = None
    ) -> LearnResult:
        return await self._request(self._learn_one_call(name, x, y, idempotency_key))

    async def iter_learn_many(
        self, name: str, xs: Iterable[Any], ys: Iterable[Any], *, batch_size: int | None = None
    ) -> AsyncIterator[LearnBatchResult]:
        """See :meth:`clients.Client.iter_learn_many`; batches are sent one after another."""
        for samples in iter_sample_chunks(xs, ys, batch_size or self.batch_size):
            yield await self._request(self._learn_batch_call(name, samples))

    async def learn_many(
        self, name: str, xs: Iterable[Any], ys: Iterable[Any], *, batch_size: int | None = None
    ) -> list[LearnResult]:
        return [
            r
            async for batch in self.iter_learn_many(name, xs, ys, batch_size=batch_size)
            for r in batch.results
        ]

    # --------------------------------------------------------------- prediction
    async def predict_one(
        self, name: str, x: Any, *, label_later: bool = False, prediction_id: str | None = None
    ) -> Prediction:
        """See :meth:`clients.Client.predict_one`."""
        return await self._request(self._predict_one_call(name, x, label_later, prediction_id))

    async def predict_many(
        self, name: str, xs: Iterable[Any], *, batch_size: int | None = None, label_later: bool = False
    ) -> list[Prediction]:
        out: list[Prediction] = []
        for chunk in iter_chunks(xs, batch_size or self.batch_size):
            out.extend(await self._request(self._predict_batch_call(name, chunk, label_later)))
        return out

    # ------------------------------------------------------------ delayed labels
    async def label(
        self, name: str, prediction_id: str, y: Any, *, idempotency_key: str | None = None
    ) -> LearnResult:
        """See :meth:`clients.Client.label`."""
        return await self._request(self._label_call(name, prediction_id, y, idempotency_key))

    async def label_many(
        self,
        name: str,
        labels: Iterable[tuple[str, Any]] | Mapping[str, Any],
        *,
        batch_size: int | None = None,
    ) -> list[LearnResult]:
        pairs = labels.items() if isinstance(labels, Mapping) else labels
        out: list[LearnResult] = []
        for chunk in iter_chunks(pairs, batch_size or self.batch_size):
            out.extend((await self._request(self._labels_call(name, [(p, y) for p, y in chunk]))).results)
        return out

    # ------------------------------------------------------------------ streams
    async def stream_step(
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
        """See :meth:`clients.Client.stream_step`."""
        return await self._request(
            self._stream_step_call(name, stream, x, y, label_later, prediction_id, idempotency_key)
        )

    async def stream_steps(
        self, name: str, steps: Iterable[Mapping[str, Any]], *, batch_size: int | None = None
    ) -> list[StreamResult]:
        out: list[StreamResult] = []
        for chunk in iter_chunks(steps, batch_size or self.batch_size):
            out.extend((await self._request(self._stream_steps_call(name, [dict(s) for s in chunk]))).results)
        return out

    async def stream_info(self, name: str, stream: str) -> StreamInfo:
        return await self._request(self._stream_info_call(name, stream))

    async def reset_stream(self, name: str, stream: str) -> None:
        await self._request(self._reset_stream_call(name, stream))

    async def list_streams(self, name: str, *, page_size: int = 100) -> list[StreamInfo]:
        out: list[StreamInfo] = []
        cursor: str | None = None
        while True:
            page, cursor = await self._request(self._list_streams_call(name, cursor, page_size))
            out.extend(page)
            if not cursor:
                return out

    # --------------------------------------------------------------- inspection
    async def stats(self, name: str) -> Stats:
        return await self._request(self._stats_call(name))

    async def metrics(self, name: str) -> Metrics:
        return await self._request(self._metrics_call(name))

    async def replicas(self) -> list[Replica]:
        """The live replicas of the service and the models each owns."""
        return await self._request(self._replicas_call())

    async def health(self, *, ready: bool = False) -> Health:
        return await self._request(self._health_call(ready))

    async def wait_until_ready(self, timeout: float = 30.0, interval: float = 0.2) -> Health:
        deadline = time.monotonic() + timeout
        while True:
            try:
                health = await self.health(ready=True)
                if health.ok:
                    return health
            except APIConnectionError:
                pass
            if time.monotonic() >= deadline:
                raise APIConnectionError(f"{self.base_url} not ready after {timeout:.0f} s")
            await self._sleep(interval)
