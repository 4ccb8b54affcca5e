"""Inspection: the normalizer statistics of every ON layer, and prequential metrics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.responses import Response

from service import executors
from service.api.deps import ModelDep, ReadAccess, SettingsDep
from service.api.schemas import ErrorBody, MetricsResponse, StatsResponse
from service.errors import NotFoundError, json_response
from service.model_metrics import extra_metrics

router = APIRouter(prefix="/v1/models/{name}", tags=["inspect"], dependencies=[ReadAccess])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or invalid API key"},
    404: {"model": ErrorBody, "description": "no such model, or no such layer"},
}


@router.get("/stats", response_model=StatsResponse, responses=_RESPONSES)
async def read_stats(
    handle: ModelDep,
    settings: SettingsDep,
    layer: Annotated[str | None, Query(description="one layer's name (see the model's 'layers')")] = None,
) -> Response:
    """Every ON layer's mu, var, u, v, alphas, summaries and live layer-scaling RMS."""
    await handle.readable(settings.FOLLOWER_STALENESS_SECONDS)
    try:
        step, layers = await executors.of(handle.model).read(handle.model.read_stats, layer)
    except KeyError:
        raise NotFoundError(
            f"model {handle.model.name!r} has no ON layer {layer!r}; its layers are {handle.model.layers}"
        ) from None
    return json_response(200, {"step": step, "layers": layers})


@router.get("/metrics", response_model=MetricsResponse, responses=_RESPONSES)
async def read_metrics(handle: ModelDep, settings: SettingsDep) -> Response:
    """Prequential metrics (samples seen, loss, accuracy or MAE) and learn/predict latency
    (of this replica's requests)."""
    await handle.readable(settings.FOLLOWER_STALENESS_SECONDS)
    model = handle.model
    step, metrics = await executors.of(model).read(model.read_metrics)
    latency = {"learn": model.learn_latency.summary(), "predict": model.predict_latency.summary()}
    extra = await extra_metrics(handle, settings)
    return json_response(200, {"step": step, **metrics, **extra, "latency": latency})
