"""Create, list, read and delete models."""

from __future__ import annotations

import asyncio
import datetime as dt

from fastapi import APIRouter, Request, Response, status
from redis.exceptions import RedisError

from model.spec import ModelSpec
from service.api import bodies
from service.api.deps import AnyModelDep, ReadAccess, RegistryDep, SettingsDep, WriteAccess
from service.api.schemas import SPEC_EXAMPLES, ErrorBody, ModelInfo, ModelList, ValidationErrorBody, json_body
from service.errors import ConflictError, ServiceError
from service.registry import ModelHandle
from service.store import leases
from service.store.connection import UNREACHABLE

router = APIRouter(prefix="/v1/models", tags=["models"])

_ERRORS = {
    401: {"model": ErrorBody, "description": "missing or invalid API key"},
    404: {"model": ErrorBody, "description": "no such model"},
    422: {"model": ValidationErrorBody, "description": "invalid name or body"},
}


def _time(t: float | None) -> dt.datetime | None:
    return None if t is None else dt.datetime.fromtimestamp(t, dt.timezone.utc)


async def model_info(handle: ModelHandle, registry: RegistryDep, settings: SettingsDep) -> ModelInfo:
    """The model as this replica sees it: a copy at most FOLLOWER_STALENESS_SECONDS old
    when another replica owns it; its owner as the lease in Redis says."""
    if handle.unrecoverable is None:
        try:
            await handle.readable(settings.FOLLOWER_STALENESS_SECONDS)
        except (ServiceError, *UNREACHABLE, RedisError):
            pass  # answer with the copy this replica has
    try:
        owner = await leases.holder(registry.redis, registry.prefix, handle.name)
    except (*UNREACHABLE, RedisError):  # what this replica knows
        owner = registry.replica if handle.writer is not None else None
    model = handle.model
    broken = handle.unrecoverable is not None
    return ModelInfo(
        name=handle.name,
        spec=None if broken and not handle.spec_valid else model.spec,
        step=model.step,
        layers=handle.layers,
        created_at=_time(model.created_at),  # type: ignore[arg-type]
        updated_at=_time(model.updated_at),
        owner=owner,
        status="unrecoverable" if broken else "ok",
        error=handle.unrecoverable,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ModelInfo,
    dependencies=[WriteAccess],
    responses={
        **_ERRORS,
        403: {"model": ErrorBody, "description": "read-only API key"},
        409: {
            "model": ErrorBody,
            "description": "the name is taken (by another spec, or a trained model)",
        },
        413: {"model": ErrorBody, "description": "body over the limit"},
        415: {"model": ErrorBody, "description": "the body is not application/json"},
        503: {"model": ErrorBody, "description": "Redis unreachable; nothing was created"},
    },
    openapi_extra=json_body(ModelSpec, SPEC_EXAMPLES),
)
async def create_model(request: Request, registry: RegistryDep, settings: SettingsDep) -> ModelInfo:
    """Create a model from a spec; it starts at step 0. Creating the very model that
    exists (the same spec, not trained yet) answers it: the retry of a create whose
    answer was lost is not a conflict."""
    spec = await bodies.read_model(request, ModelSpec)  # 422 for any malformed body, by name
    try:
        handle = await registry.create(spec)
    except ConflictError:
        handle = await _same_untrained(registry, spec)
        if handle is None:
            raise
    return await model_info(handle, registry, settings)


async def _same_untrained(registry: RegistryDep, spec: ModelSpec) -> ModelHandle | None:
    """The existing model named ``spec.name`` if it is exactly ``spec`` at step 0."""
    try:
        handle = await registry.get(spec.name)
    except ServiceError:
        return None
    if handle.unrecoverable is not None or handle.model.step != 0 or handle.spec != spec:
        return None
    return handle


@router.get("", response_model=ModelList, dependencies=[ReadAccess], responses={401: _ERRORS[401]})
async def list_models(registry: RegistryDep, settings: SettingsDep) -> ModelList:
    """Every model, by name."""
    try:
        await registry.sync_catalog()
    except (*UNREACHABLE, RedisError):
        pass  # list what this replica knows
    infos = await asyncio.gather(*(model_info(h, registry, settings) for h in registry.handles()))
    return ModelList(models=list(infos))


@router.get("/{name}", response_model=ModelInfo, dependencies=[ReadAccess], responses=_ERRORS)
async def read_model(handle: AnyModelDep, registry: RegistryDep, settings: SettingsDep) -> ModelInfo:
    """A model's spec, step, timestamps and owner (and status: ok, or unrecoverable)."""
    return await model_info(handle, registry, settings)


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    response_model=None,
    dependencies=[WriteAccess],
    responses={**_ERRORS, 403: {"model": ErrorBody, "description": "read-only API key"}},
)
async def delete_model(handle: AnyModelDep, registry: RegistryDep) -> Response:
    """Delete a model and all its keys; learns still queued for it answer 404."""
    await registry.delete(handle.name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
