"""Bearer API keys: read-write keys may do everything, read-only keys may predict and
read. With no keys configured the service is open (and says so at start-up)."""

from __future__ import annotations

import hmac
from enum import Enum

from fastapi import Request

from service.config import Settings
from service.errors import ForbiddenError, UnauthorizedError


class Access(Enum):
    NONE = 0
    READ = 1
    WRITE = 2


def _matches(presented: bytes, keys: list[bytes]) -> bool:
    """Compare against every key, without stopping early, in constant time per key."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(presented, key)
    return found


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.auth_enabled
        self._write = [k.encode() for k in settings.API_KEYS]
        self._read = [k.encode() for k in settings.READONLY_API_KEYS]

    def access(self, authorization: str | None) -> Access:
        if not self.enabled:
            return Access.WRITE
        if not authorization:
            raise UnauthorizedError("missing Authorization header: send 'Authorization: Bearer <API key>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedError("malformed Authorization header: expected 'Bearer <API key>'")
        presented = token.strip().encode()
        is_writer = _matches(presented, self._write)
        is_reader = _matches(presented, self._read)
        if is_writer:
            return Access.WRITE
        if is_reader:
            return Access.READ
        raise UnauthorizedError("invalid API key")


def _authenticator(request: Request) -> Authenticator:
    return request.app.state.authenticator


async def require_read(request: Request) -> None:
    """Dependency: any valid key (or none configured)."""
    auth = _authenticator(request)
    if auth.enabled:
        auth.access(request.headers.get("authorization"))


def check_write(auth: Authenticator, authorization: str | None) -> None:
    """A read-write key (or none configured), else 401/403."""
    if auth.enabled and auth.access(authorization) is not Access.WRITE:
        raise ForbiddenError(
            "this API key is read-only: it may predict and read, not learn, create or delete"
        )


async def require_write(request: Request) -> None:
    """Dependency: a read-write key (or none configured)."""
    check_write(_authenticator(request), request.headers.get("authorization"))
