"""Liveness, readiness (Redis reachable) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from starlette.responses import Response

from service.api.deps import HealthDep, ReadAccess, ReplicaDep, SettingsDep
from service.api.schemas import HealthResponse, ReplicaInfo, ReplicaList, UnreadyBody
from service.errors import UnavailableError, json_response
from service.store.connection import UNREACHABLE, RedisHealth

router = APIRouter(tags=["health"])


def redis_state(health: RedisHealth) -> str:
    """``up``, ``down`` (unreachable) or ``out of memory`` (answers, refuses writes)."""
    if not health.up:
        return "down"
    return "out of memory" if health.refusing is not None else "up"


@router.get("/healthz", response_model=HealthResponse)
async def read_health(settings: SettingsDep, health: HealthDep) -> HealthResponse:
    """Liveness: the process answers; which replica it is, and Redis as last seen (no
    round trip: readiness asks Redis)."""
    return HealthResponse(status="ok", replica=settings.replica_id, redis=redis_state(health))


@router.get(
    "/readyz",
    response_model=HealthResponse,
    responses={503: {"model": UnreadyBody, "description": "Redis unreachable, or out of memory"}},
)
async def read_readiness(health: HealthDep, replica: ReplicaDep) -> Response:
    """Readiness: Redis answers a ping and accepts writes (learns need both; predictions
    neither). Also says whether this replica saw Redis lose data (its models were then
    re-persisted)."""
    body: dict[str, object] = {"replica": replica.id}
    if replica.data_loss.detected:
        body["data_loss"] = replica.data_loss.as_json()
    if not await health.ping():
        detail = "Redis is unreachable"
    elif health.refusing is not None:
        detail = health.refusing
    else:
        return json_response(200, {"status": "ready", "redis": "up", **body})
    return json_response(
        503, {"detail": detail, "status": "unavailable", "redis": redis_state(health), **body}
    )


@router.get("/v1/replicas", response_model=ReplicaList, dependencies=[ReadAccess], tags=["replicas"])
async def list_replicas(replica: ReplicaDep) -> ReplicaList:
    """The live replicas, and the models each owns."""
    try:
        found = await replica.replicas()
    except (*UNREACHABLE, RedisError) as exc:
        raise UnavailableError(f"Redis is unreachable: cannot list the replicas ({exc})") from exc
    return ReplicaList(replicas=[ReplicaInfo(**r) for r in found])


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
    telemetry.redis_writable.set(1 if health.up and health.refusing is None else 0)
    return Response(generate_latest(telemetry.registry), media_type=CONTENT_TYPE_LATEST)
