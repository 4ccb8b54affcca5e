"""The hot routes, ``POST /v1/models/{name}/learn`` and ``/learn/batch``, served as plain
ASGI in front of FastAPI.

Through FastAPI a learn request passes about a dozen middleware and routing layers and a
dependency solver before its handler runs, which costs more than a training step. Here
it is matched by one regular expression and then does exactly what the FastAPI route
does, in the same order and with the same answers: the JSON content type (415), the
body limit (a declared ``Content-Length`` first, then the bytes as they stream in), the API key, the model
name, the model (404, 409, 503), the ``Idempotency-Key``, then
:func:`service.api.routes.learn.learn_body`, the same function the FastAPI routes call.
It counts the request in the same Prometheus series. Anything it does not match (other
methods, a trailing slash, other paths, and cross-origin requests when CORS is
configured, which its middleware answers) goes to FastAPI, whose routes for these paths
stay for the OpenAPI schema.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import orjson
from prometheus_client import Counter, Histogram
from starlette.types import Receive, Scope, Send

from model.spec import NAME_PATTERN
from service.api.deps import NAME_RE
from service.api.limits import content_type_problem, declared_over, header, too_large
from service.api.routes.learn import learn_body
from service.auth import check_write
from service.config import Settings
from service.errors import (
    InvalidInputError,
    PayloadTooLargeError,
    ServiceError,
    UnavailableError,
    UnsupportedMediaTypeError,
    explain_unavailable,
)
from service.telemetry import Telemetry

logger = logging.getLogger(__name__)

_PATH = re.compile(r"/v1/models/([^/]+)/learn(/batch)?")
_TEMPLATES = ("/v1/models/{name}/learn", "/v1/models/{name}/learn/batch")


class HotRoutes:
    """Serves the learn routes of one app; ``match`` says whether a request is one."""

    def __init__(self, state: Any) -> None:
        self.state = state  # the app's state: settings, authenticator, telemetry, registry
        self._counters: dict[tuple[str, int], Counter] = {}
        self._timers: dict[str, Histogram] = {}

    def match(self, scope: Scope) -> tuple[str, bool] | None:
        """``(model name, batch)`` for a learn request this path serves, else None."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        m = _PATH.fullmatch(scope["path"])
        if m is None or getattr(self.state, "registry", None) is None:  # not started yet
            return None
        if self.state.settings.CORS_ORIGINS and header(scope, b"origin") is not None:
            return None  # the CORS middleware adds its headers (FastAPI's route does the same work)
        return m.group(1), m.group(2) is not None

    async def serve(self, scope: Scope, receive: Receive, send: Send, name: str, batch: bool) -> None:
        started = time.perf_counter()
        template = _TEMPLATES[batch]
        status = 500
        try:
            status, body, headers = await self._answer(scope, receive, name, batch)
        except ServiceError as exc:
            if isinstance(exc, UnavailableError):  # unreachable, or refusing writes?
                exc = explain_unavailable(exc, await self.state.health.check_memory())
            status, body, headers = exc.status_code, {"detail": exc.detail, **exc.extra}, exc.headers
        except _Disconnected:
            return
        except Exception:
            await _send(send, 500, b"Internal Server Error", None, b"text/plain; charset=utf-8")
            raise  # uvicorn logs it, as it does for FastAPI's routes
        finally:
            self._count(template, status, time.perf_counter() - started)
        await _send(send, status, orjson.dumps(body), headers)

    async def _answer(
        self, scope: Scope, receive: Receive, name: str, batch: bool
    ) -> tuple[int, dict[str, Any], dict[str, str] | None]:
        settings: Settings = self.state.settings
        headers = _headers(scope)
        problem = content_type_problem(headers.get("content-type"))
        if problem is not None:
            raise UnsupportedMediaTypeError(problem)
        declared = declared_over(headers.get("content-length"), settings.MAX_BODY_BYTES)
        if declared is not None:
            raise PayloadTooLargeError(too_large(settings.MAX_BODY_BYTES, declared))
        check_write(self.state.authenticator, headers.get("authorization"))
        if not NAME_RE.match(name):
            raise InvalidInputError(f"invalid model name {name!r}: must match {NAME_PATTERN}")
        handle = await self.state.registry.get(name)
        handle.require_usable()
        raw = await _read_body(receive, settings.MAX_BODY_BYTES)
        body, extra = await learn_body(
            handle, raw, headers.get("idempotency-key"), batch, settings.MAX_BATCH_SAMPLES
        )
        return 200, body, extra

    def _count(self, template: str, status: int, seconds: float) -> None:
        counter = self._counters.get((template, status))
        if counter is None:
            telemetry: Telemetry = self.state.telemetry
            counter = self._counters[(template, status)] = telemetry.requests.labels(
                "POST", template, str(status)
            )
        timer = self._timers.get(template)
        if timer is None:
            timer = self._timers[template] = self.state.telemetry.request_seconds.labels(template)
        counter.inc()
        timer.observe(seconds)


class _Disconnected(Exception):
    """The client went away before its body arrived: nobody to answer."""


_WANTED = frozenset({b"content-length", b"content-type", b"authorization", b"idempotency-key"})


def _headers(scope: Scope) -> dict[str, str]:
    """The request headers this path reads (lower-case names, as ASGI gives them), the
    first of repeated ones (as Starlette's ``request.headers.get``)."""
    out: dict[str, str] = {}
    for key, value in scope["headers"]:
        if key in _WANTED:
            name = key.decode("latin-1")
            if name not in out:
                out[name] = value.decode("latin-1")
    return out


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(too_large(limit))
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send(
    send: Send,
    status: int,
    body: bytes,
    headers: dict[str, str] | None,
    content_type: bytes = b"application/json",
) -> None:
    raw = [(b"content-length", str(len(body)).encode()), (b"content-type", content_type)]
    if headers:
        raw.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
