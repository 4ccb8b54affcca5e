"""A Client wired to an ``httpx.MockTransport``: the SDK's logic, with no network."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from clients import AsyncClient, Client

BASE = "http://onlinenorm.test"
Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """Every request the transport saw and every sleep the client took."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    async def asleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    @property
    def paths(self) -> list[str]:
        return [r.url.path for r in self.requests]


def mock_client(handler: Handler, **options: Any) -> tuple[Client, Recorder]:
    recorder = Recorder(handler)
    client = Client(BASE, transport=httpx.MockTransport(recorder), **options)
    client._sleep = recorder.sleep
    return client, recorder


def mock_async_client(handler: Handler, **options: Any) -> tuple[AsyncClient, Recorder]:
    recorder = Recorder(handler)
    client = AsyncClient(BASE, transport=httpx.MockTransport(recorder), **options)
    client._sleep = recorder.asleep
    return client, recorder


def sequence(*steps: httpx.Response | Exception) -> Handler:
    """Answer the i-th request with the i-th step (raise it if it is an exception)."""
    remaining = list(steps)

    def handler(request: httpx.Request) -> httpx.Response:
        step = remaining.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    return handler


LEARNED = {"step": 1, "loss": 0.5, "prediction": 3}
MODEL = {
    "name": "m",
    "spec": {"name": "m", "task": "classification", "input_shape": [4], "num_classes": 3},
    "step": 0,
    "layers": ["input_norm"],
    "created_at": "2025-01-01T00:00:00Z",
    "updated_at": None,
}


def learn_batch_echo(request: httpx.Request) -> httpx.Response:
    """``learn/batch`` that answers one result per sample, its prediction = its y."""
    import json

    samples = json.loads(request.content)["samples"]
    return httpx.Response(
        200,
        json={
            "step": len(samples),
            "results": [{"step": i + 1, "loss": 0.1, "prediction": s["y"]} for i, s in enumerate(samples)],
        },
    )
