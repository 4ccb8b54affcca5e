"""Dependencies, as ``Annotated`` aliases so each route's signature says what it needs.

All are ``async def``: FastAPI runs plain ``def`` dependencies in a thread pool, a
thread hop per dependency per request that the hot routes cannot afford."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Path, Request

from model.spec import NAME_PATTERN
from service.auth import require_read, require_write
from service.cluster.replica import Replica
from service.config import Settings
from service.errors import InvalidInputError
from service.registry import ModelHandle, Registry
from service.store.connection import RedisHealth


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_registry(request: Request) -> Registry:
    return request.app.state.registry


async def get_health(request: Request) -> RedisHealth:
    return request.app.state.health


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
HealthDep = Annotated[RedisHealth, Depends(get_health)]
NAME_RE = re.compile(NAME_PATTERN)
ModelName = Annotated[
    str,
    Path(
        description=f"model name, matching {NAME_PATTERN}",
        examples=["digits"],
        # documented, not enforced here: get_any_model's 422 names the bad name itself
        json_schema_extra={"pattern": NAME_PATTERN},
    ),
]


async def get_replica(request: Request) -> Replica:
    return request.app.state.replica


ReplicaDep = Annotated[Replica, Depends(get_replica)]


async def get_any_model(name: ModelName, registry: RegistryDep) -> ModelHandle:
    """The named model, even one that could not be recovered (to read or delete it);
    422 for an impossible name, 404 for an unknown one."""
    if not NAME_RE.match(name):
        raise InvalidInputError(f"invalid model name {name!r}: must match {NAME_PATTERN}")
    return await registry.get(name)


async def get_model(handle: Annotated[ModelHandle, Depends(get_any_model)]) -> ModelHandle:
    """The named model, fit to learn and predict (409 if it could not be recovered)."""
    handle.require_usable()
    return handle


AnyModelDep = Annotated[ModelHandle, Depends(get_any_model)]
ModelDep = Annotated[ModelHandle, Depends(get_model)]
ReadAccess = Depends(require_read)
WriteAccess = Depends(require_write)
