"""Delayed-label figures of a model for its metrics: read from Redis by any replica."""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError

from service.config import Settings
from service.registry import ModelHandle
from service.store import pending
from service.store.connection import UNREACHABLE


async def label_metrics(handle: ModelHandle, settings: Settings) -> dict[str, Any]:
    """``pending_labels``, counters and label delays; empty while Redis cannot say (the
    rest of the metrics are served from memory and stay available)."""
    remote = handle.remote
    try:
        counts = await pending.label_counts(
            remote.redis, remote.prefix, handle.name, settings.LABEL_TTL_SECONDS
        )
    except UNREACHABLE as exc:
        remote.health.mark_down(exc)
        return {}
    except RedisError:
        return {}
    return counts.to_json()
