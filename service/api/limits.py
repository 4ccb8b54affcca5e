"""What a request must be before its body is read (pure ASGI): a JSON content type
(415 otherwise) and a size under the limit (413 otherwise).

Every body of the API is JSON. Requiring ``application/json`` closes the cross-site
door a keyless service on localhost would otherwise leave open: a web page may post a
``text/plain`` "simple request" to any origin without a CORS preflight, but never an
``application/json`` one."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import json_response


def too_large(limit: int, size: int | None = None) -> str:
    """The 413 message, with the declared size if there was one."""
    got = f" ({size} bytes)" if size is not None else ""
    return f"request body too large{got}: the limit is {limit} bytes"


#: Methods whose requests carry a body in this API (every one of them JSON); the API
#: has no PUT or PATCH route, so those are left to answer 405.
BODY_METHODS = frozenset({"POST"})


def content_type_problem(value: bytes | str | None) -> str | None:
    """Why a request body of Content-Type ``value`` is refused (the 415 message), or None
    for ``application/json`` (parameters allowed, a charset only if UTF-8)."""
    if value is None:
        return "Content-Type is missing: request bodies must be application/json"
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    media, _, params = text.partition(";")
    if media.strip().lower() != "application/json":
        return f"Content-Type {media.strip()!r} is not supported: request bodies must be application/json"
    for param in params.split(";"):
        key, _, val = param.partition("=")
        if key.strip().lower() == "charset" and val.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return f"charset {val.strip()!r} is not supported: request bodies are application/json in UTF-8"
    return None


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of request header ``name`` (lower case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


class ContentTypeMiddleware:
    """A request with a body (a POST) that is not declared ``application/json``
    is refused with 415 before anything reads it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in BODY_METHODS:
            problem = content_type_problem(header(scope, b"content-type"))
            if problem is not None:
                await json_response(415, {"detail": problem})(scope, receive, send)
                return
        await self.app(scope, receive, send)


def declared_over(value: bytes | str | None, limit: int) -> int | None:
    """The declared Content-Length ``value`` if it is over ``limit`` (an unreadable one
    counts as 0: the streamed bytes are counted anyway)."""
    if value is None:
        return None
    try:
        size = int(value)
    except ValueError:
        return None
    return size if size > limit else None


class BodyLimitMiddleware:
    """A declared Content-Length over the limit is refused at once; a chunked body is
    counted as it streams in and refused when it crosses the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self, size: int | None = None) -> str:
        return too_large(self.max_bytes, size)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                size = declared_over(value, self.max_bytes)
                if size is not None:
                    await json_response(413, {"detail": self._message(size)})(scope, receive, send)
                    return
                break
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException, so FastAPI's body parsing passes it through as is.
                    raise HTTPException(status_code=413, detail=self._message())
            return message

        await self.app(scope, limited_receive, send)
