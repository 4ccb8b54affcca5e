"""One exception hierarchy for every way a call can fail, keyed by HTTP status.

Catch :class:`APIError` for everything, a subclass for one cause. Each carries the
server's message (its ``detail``), the status, and the parsed body, so callers never
parse responses themselves.
"""

from __future__ import annotations

from typing import Any

import httpx

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "ConflictError",
    "InternalServerError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServiceUnavailableError",
    "ValidationError",
    "error_for_response",
]


class APIError(Exception):
    """A call failed. ``status_code`` is None when no answer came back."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        body: Any = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.body = body
        self.response = response

    def __str__(self) -> str:
        return self.message if self.status_code is None else f"{self.status_code}: {self.message}"


class APIConnectionError(APIError):
    """No answer: the service could not be reached or the connection dropped."""


class APITimeoutError(APIConnectionError):
    """No answer in time. For a learn, whether it was applied is unknown."""


class ValidationError(APIError):
    """400/422: the request, a sample or a spec does not fit; nothing was changed."""


class AuthenticationError(APIError):
    """401: no API key, or an unknown one."""


class PermissionDeniedError(APIError):
    """403: the key may not do this (e.g. a read-only key that tried to learn)."""


class NotFoundError(APIError):
    """404: no such model (or path)."""


class ConflictError(APIError):
    """409: a model of that name already exists."""


class PayloadTooLargeError(APIError):
    """413: too many samples or bytes in one request; send smaller batches."""


class RateLimitError(APIError):
    """429: too many requests; retried automatically, raised once retries run out."""


class InternalServerError(APIError):
    """5xx other than 503: the service failed."""


class ServiceUnavailableError(APIError):
    """503: the service cannot serve now (e.g. Redis unreachable); nothing was applied."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: ValidationError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: ValidationError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def _message(body: Any, response: httpx.Response) -> str:
    """The server's ``detail``, flattened when it is FastAPI's list of field errors."""
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str) and detail:
        return detail
    if isinstance(detail, list) and detail:
        parts = []
        for err in detail:
            if isinstance(err, dict):
                loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
                msg = str(err.get("msg", err))
                parts.append(f"{loc}: {msg}" if loc else msg)
            else:
                parts.append(str(err))
        return "; ".join(parts)
    text = response.text.strip()
    return text[:500] if text else (response.reason_phrase or "error")


def error_for_response(response: httpx.Response) -> APIError:
    """The exception for a non-2xx answer, with the server's message."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    status = response.status_code
    cls = _BY_STATUS.get(status) or (InternalServerError if status >= 500 else APIError)
    return cls(_message(body, response), status_code=status, body=body, response=response)
