"""Normalizer statistics for inspection: one hash per ON layer with its latest state,
and a capped stream of per-layer summaries (the history)."""

from __future__ import annotations

import time
from typing import Any

import orjson
from redis.asyncio import Redis

from service.store import keys
from service.store.fencing import FencedWrite
from service.store.stats_history import layer_summary


def _layer_fields(layer: dict[str, Any], step: int, now: float) -> dict[str, bytes]:
    # Every value as JSON, scalars too: None stays null and floats keep full precision.
    fields = {k: orjson.dumps(v) for k, v in layer.items() if k != "name"}
    fields["step"] = str(step).encode()
    fields["updated_at"] = repr(now).encode()
    return fields


def add_stats(
    write: FencedWrite,
    step: int,
    layers: list[dict[str, Any]],
    history: int,
    metrics: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Queue, on the owner's fenced ``write``: each layer's hash and one history entry
    (layer summaries and the prequential metrics at ``step``). Returns the summaries."""
    prefix, name = write.fence.prefix, write.fence.name
    now = time.time()
    for layer in layers:
        write.hset(keys.norm_key(prefix, name, layer["name"]), _layer_fields(layer, step, now))
    summaries = [layer_summary(layer) for layer in layers]
    fields = {b"step": str(step).encode(), b"t": repr(now).encode(), b"layers": orjson.dumps(summaries)}
    if metrics is not None:
        fields[b"metrics"] = orjson.dumps(metrics)
    write.xadd(keys.stats_key(prefix, name), fields, "MAXLEN", "~", history)
    return summaries


async def read_layer(redis: Redis, prefix: str, name: str, layer: str) -> dict[str, Any] | None:
    """A layer's published hash, decoded (for tests and tools)."""
    fields = await redis.hgetall(keys.norm_key(prefix, name, layer))
    if not fields:
        return None
    out: dict[str, Any] = {k.decode(): orjson.loads(v) for k, v in fields.items()}
    out["name"] = layer
    return out
