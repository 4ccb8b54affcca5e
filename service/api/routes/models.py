"""Create, list, read and delete models."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Body, Response, status

from model.spec import ModelSpec
from service.api.deps import ModelDep, ReadAccess, RegistryDep, WriteAccess
from service.api.schemas import SPEC_EXAMPLES, ErrorBody, ModelInfo, ModelList
from service.registry import ModelHandle

router = APIRouter(prefix="/v1/models", tags=["models"])

_ERRORS = {
    401: {"model": ErrorBody, "description": "missing or invalid API key"},
    404: {"model": ErrorBody, "description": "no such model"},
    422: {"model": ErrorBody, "description": "invalid name or body"},
}


def _time(t: float | None) -> dt.datetime | None:
    return None if t is None else dt.datetime.fromtimestamp(t, dt.timezone.utc)


def model_info(handle: ModelHandle) -> ModelInfo:
    model = handle.model
    return ModelInfo(
        name=model.name,
        spec=model.spec,
        step=model.step,
        layers=model.layers,
        created_at=_time(model.created_at),  # type: ignore[arg-type]
        updated_at=_time(model.updated_at),
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ModelInfo,
    dependencies=[WriteAccess],
    responses={
        **_ERRORS,
        403: {"model": ErrorBody, "description": "read-only API key"},
        409: {"model": ErrorBody, "description": "the name is taken"},
        503: {"model": ErrorBody, "description": "Redis unreachable; nothing was created"},
    },
)
async def create_model(
    spec: Annotated[ModelSpec, Body(openapi_examples=SPEC_EXAMPLES)], registry: RegistryDep
) -> ModelInfo:
    """Create a model from a spec; it starts at step 0."""
    return model_info(await registry.create(spec))


@router.get("", response_model=ModelList, dependencies=[ReadAccess], responses={401: _ERRORS[401]})
async def list_models(registry: RegistryDep) -> ModelList:
    """Every model, by name."""
    return ModelList(models=[model_info(h) for h in registry.handles()])


@router.get("/{name}", response_model=ModelInfo, dependencies=[ReadAccess], responses=_ERRORS)
async def read_model(handle: ModelDep) -> ModelInfo:
    """A model's spec, step and timestamps."""
    return model_info(handle)


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    response_model=None,
    dependencies=[WriteAccess],
    responses={**_ERRORS, 403: {"model": ErrorBody, "description": "read-only API key"}},
)
async def delete_model(handle: ModelDep, registry: RegistryDep) -> Response:
    """Delete a model and all its keys; learns still queued for it answer 404."""
    await registry.delete(handle.model.name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
