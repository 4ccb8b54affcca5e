"""Refuse request bodies over the limit with 413 before reading them (pure ASGI)."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import json_response


def too_large(limit: int, size: int | None = None) -> str:
    """The 413 message, with the declared size if there was one."""
    got = f" ({size} bytes)" if size is not None else ""
    return f"request body too large{got}: the limit is {limit} bytes"


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
