"""History: the published normalizer summaries and prequential metrics, step by step,
read from the model's capped stats stream in Redis (so any replica can answer)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Query
from redis.exceptions import RedisError, ResponseError
from starlette.responses import Response

from service.api.deps import ModelDep, ReadAccess, RegistryDep, SettingsDep
from service.api.schemas import ErrorBody, ValidationErrorBody
from service.api.watch_schemas import HistoryResponse
from service.errors import InvalidInputError, NotFoundError, UnavailableError, json_response
from service.store import stats_history
from service.store.connection import UNREACHABLE

router = APIRouter(prefix="/v1/models/{name}", tags=["watch"], dependencies=[ReadAccess])

MAX_LIMIT = 10_000
_STEP = re.compile(r"^[0-9]{1,18}$")
_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or invalid API key"},
    404: {"model": ErrorBody, "description": "no such model, or no such layer"},
    422: {"model": ValidationErrorBody, "description": "invalid since or limit (or an id Redis refuses)"},
    503: {"model": ErrorBody, "description": "Redis unreachable"},
}
Since = Annotated[
    str | None,
    Query(
        description="a stats entry id (e.g. 1718000000000-0): the entries after it; or a step "
        "(e.g. 500): the entries with a larger step. Unset: the newest `limit` entries",
        examples=["1718000000000-0", "500"],
    ),
]


def _parse_since(since: str) -> tuple[str | None, int | None]:
    """(entry id, None) or (None, step); 422 for anything else."""
    if stats_history.is_entry_id(since):
        return since, None
    if _STEP.match(since):
        return None, int(since)
    raise InvalidInputError(
        f"since must be a stats entry id like '1718000000000-0' or a step (got {since!r})"
    )


@router.get("/stats/history", response_model=HistoryResponse, responses=_RESPONSES)
async def read_stats_history(
    handle: ModelDep,
    registry: RegistryDep,
    settings: SettingsDep,
    layer: Annotated[str | None, Query(description="keep only this ON layer")] = None,
    since: Since = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="most entries to answer")] = 1000,
) -> Response:
    """Per published step: every ON layer's summaries and the prequential metrics, oldest first."""
    model = handle.model
    if layer is not None and layer not in model.layers:
        raise NotFoundError(f"model {model.name!r} has no ON layer {layer!r}; its layers are {model.layers}")
    entry_id, step = _parse_since(since) if since is not None else (None, None)
    redis, prefix = registry.redis, settings.KEY_PREFIX
    try:
        if entry_id is not None:
            entries = await stats_history.read_after_id(redis, prefix, model.name, entry_id, limit)
        elif step is not None:
            entries = await stats_history.read_after_step(redis, prefix, model.name, step, limit)
        else:
            entries = await stats_history.read_latest(redis, prefix, model.name, limit)
    except ResponseError as exc:  # Redis answered: it refuses the query (an id it cannot start after)
        if entry_id is None:
            raise UnavailableError(f"Redis refused to read the history ({exc})") from exc
        raise InvalidInputError(f"since {entry_id!r} is not an id Redis can start after ({exc})") from exc
    except (*UNREACHABLE, RedisError) as exc:
        raise UnavailableError(f"Redis is unreachable: the history cannot be read ({exc})") from exc
    return json_response(200, {"entries": [stats_history.decode_entry(e, layer) for e in entries]})
