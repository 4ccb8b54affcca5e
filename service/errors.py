"""One exception hierarchy for the service, and the handlers that turn every error into
``{"detail": "<what went wrong>", ...}`` JSON with the right status."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error with an HTTP status and a message for the client; ``extra`` joins the body."""

    status_code = 500

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers
        self.extra = extra


class InvalidInputError(ServiceError):
    """The request body, a sample, or a spec does not fit: nothing was changed."""

    status_code = 422


class NonFiniteStepRejected(InvalidInputError):
    """A training step had a non-finite loss or gradient and was rolled back."""


class NotFoundError(ServiceError):
    status_code = 404


class ConflictError(ServiceError):
    status_code = 409


class PayloadTooLargeError(ServiceError):
    status_code = 413


class UnsupportedMediaTypeError(ServiceError):
    """A body that is not declared ``application/json``: nothing was read."""

    status_code = 415


class UnauthorizedError(ServiceError):
    status_code = 401

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class ForbiddenError(ServiceError):
    status_code = 403


class UnavailableError(ServiceError):
    """Redis cannot be reached: nothing was logged, so nothing was applied. Safe to retry."""

    status_code = 503

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": "1"})


class GatewayTimeoutError(ServiceError):
    """A request was logged, but its owner did not apply it in time: it will be applied,
    and a retry with the same Idempotency-Key gets its answer."""

    status_code = 504

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": "1"})


_UNREACHABLE = "Redis is unreachable"


def explain_unavailable(exc: ServiceError, refusing: str | None) -> ServiceError:
    """``exc``, or, while Redis answers but refuses writes (``refusing`` says why), a
    503 that says so instead of calling it unreachable."""
    if refusing is None or not isinstance(exc, UnavailableError) or not exc.detail.startswith(_UNREACHABLE):
        return exc
    return UnavailableError(refusing + exc.detail[len(_UNREACHABLE) :])


def json_response(status_code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    """A JSON response serialized by orjson (fast; refuses NaN by writing null)."""
    return Response(
        orjson.dumps(body), status_code=status_code, media_type="application/json", headers=headers
    )


def validation_errors(errors: list[Any]) -> list[dict[str, Any]]:
    """Pydantic's errors, reduced to what a client needs: where, what, which kind."""
    return [{k: v for k, v in err.items() if k in ("loc", "msg", "type")} for err in errors]


def readable(errors: list[dict[str, Any]]) -> str:
    """``"loc: msg; loc: msg"``: one line naming every problem."""
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = str(err.get("msg", "invalid"))
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or "invalid request"


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    if isinstance(exc, UnavailableError):
        health = getattr(request.app.state, "health", None)
        if health is not None:
            exc = explain_unavailable(exc, await health.check_memory())
    return json_response(exc.status_code, {"detail": exc.detail, **exc.extra}, exc.headers)


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = validation_errors(list(exc.errors()))
    return json_response(422, {"detail": readable(errors), "errors": errors})


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this request's path (Starlette's own 405 names
    only the first matching route's)."""
    routes = request.app.router.routes
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in routes):
            allowed.append(method)
    return allowed


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = exc.headers
    if exc.status_code == 405:
        allowed = allowed_methods(request)
        headers = {**(headers or {}), "Allow": ", ".join(allowed)}
        detail = f"method {request.method} is not allowed here; allowed: {', '.join(allowed)}"
        return json_response(405, {"detail": detail}, headers)
    return json_response(exc.status_code, {"detail": str(exc.detail)}, headers)


def install_error_handlers(app: FastAPI) -> None:
    """Every error the API raises answers JSON with a ``detail`` string."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
