"""Liveness, readiness (Redis reachable) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from service.api.deps import HealthDep, ReadAccess
from service.api.schemas import ErrorBody, HealthResponse
from service.errors import json_response

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse)
async def read_health() -> HealthResponse:
    """Liveness: the process answers."""
    return HealthResponse(status="ok")


@router.get(
    "/readyz",
    response_model=HealthResponse,
    responses={503: {"model": ErrorBody, "description": "Redis unreachable"}},
)
async def read_readiness(health: HealthDep) -> Response:
    """Readiness: Redis answers a ping (learns need it; predictions do not)."""
    if await health.ping():
        return json_response(200, {"status": "ready", "redis": "up"})
    return json_response(503, {"detail": "Redis is unreachable", "status": "unavailable", "redis": "down"})


@router.get(
    "/metrics",
    response_class=Response,
    response_model=None,
    dependencies=[ReadAccess],
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}},
)
async def read_prometheus(request: Request, health: HealthDep) -> Response:
    """Prometheus metrics (labels from bounded sets: route templates, status codes)."""
    telemetry = request.app.state.telemetry
    telemetry.redis_up.set(1 if health.up else 0)
    return Response(generate_latest(telemetry.registry), media_type=CONTENT_TYPE_LATEST)
