"""What a model's metrics add to its prequential figures: its delayed labels (read
from Redis, so any replica can say; a stateful rnn's from the model) and, for a stateful
rnn, its live streams."""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError

from service.config import Settings
from service.registry import ModelHandle
from service.store import pending
from service.store.connection import UNREACHABLE


async def extra_metrics(handle: ModelHandle, settings: Settings) -> dict[str, Any]:
    """``streams`` (live streams and their memory) and the delayed labels' figures."""
    out: dict[str, Any] = {}
    streams = handle.model.stream_figures()
    if streams is not None:
        out["streams"] = streams
    return {**out, **await _label_metrics(handle, settings)}


async def _label_metrics(handle: ModelHandle, settings: Settings) -> dict[str, Any]:
    """``pending_labels``, counters and label delays; while Redis cannot say, the last
    ones read here (the rest of the metrics are served from memory and stay available).
    A stateful rnn's steps wait for their labels in the model itself: its figures are
    read from there."""
    in_model = handle.model.stream_label_counts()
    if in_model is not None:
        return in_model.to_json()
    remote = handle.remote
    try:
        counts = await pending.label_counts(
            remote.redis, remote.prefix, handle.name, settings.LABEL_TTL_SECONDS
        )
    except (*UNREACHABLE, RedisError) as exc:
        if isinstance(exc, UNREACHABLE):
            remote.health.mark_down(exc)
        counts = handle.label_counts  # the last ones read: Redis cannot say now
        return counts.to_json() if counts is not None else {}
    handle.label_counts = counts
    return counts.to_json()
