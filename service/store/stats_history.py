"""The stats stream ``{p}:model:{name}:stats`` as a history: what one published update
holds, and how it is read back (a page of the past, or the entries after an id).

Each entry has ``step``, ``t`` (unix seconds), ``layers`` (JSON: one flat summary per
ON layer, :func:`layer_summary`) and ``metrics`` (JSON: the prequential metrics at that
step). Steps never decrease along the stream (one writer per model, and a recreated
model starts a new stream), which is what lets ``since=<step>`` stop early.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import orjson
from redis.asyncio import Redis

from service.store import keys, streams

#: A stream entry id, ``<ms>-<seq>``.
ENTRY_ID_PATTERN = r"^[0-9]{1,20}-[0-9]{1,20}$"
_ENTRY_ID = re.compile(ENTRY_ID_PATTERN)
_SCAN_CHUNK = 200
_SUMMARY_KEYS = (
    "mu_mean", "mu_spread", "mu_min", "mu_max",
    "std_mean", "std_spread", "std_min", "std_max",
    "u_mean", "u_spread", "u_abs_max",
    "v_mean", "v_spread", "v_abs_max",
)  # fmt: skip
Entry = streams.Entry


def is_entry_id(text: str) -> bool:
    """``<ms>-<seq>``, each part an unsigned 64-bit number (else Redis refuses it)."""
    return bool(_ENTRY_ID.match(text)) and all(int(part) < 2**64 for part in text.split("-"))


def _spread(values: Any) -> float | None:
    """Standard deviation across channels (population): how uneven the layer is."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.std()) if array.size else None


def layer_summary(layer: dict[str, Any]) -> dict[str, Any]:
    """One layer's point of history, from ``OnlineLearner.norm_stats()``: the model's
    own summary (mean, min, max of ``mu`` and of ``std = sqrt(var + eps)``, the divisor
    the layer uses; mean and max |.| of ``u`` and ``v``), each quantity's spread across
    channels, the layer-scaling RMS before scaling and the clamped fraction."""
    var = np.asarray(layer["var"], dtype=np.float64)
    return {
        "name": layer["name"],
        "samples_tracked": layer.get("samples_tracked"),
        **layer["summary"],
        "mu_spread": _spread(layer["mu"]),
        "std_spread": _spread(np.sqrt(var + layer.get("eps", 0.0))),
        "u_spread": _spread(layer["u"]),
        "v_spread": _spread(layer["v"]),
        "ls_rms": layer.get("ls_rms"),
        "clamped_fraction": layer.get("clamped_fraction"),
    }


def _flat_layer(layer: dict[str, Any]) -> dict[str, Any]:
    """Accept entries written before the summaries were flattened (``summary`` nested)."""
    out = {"name": layer.get("name"), "samples_tracked": layer.get("samples_tracked")}
    nested = layer.get("summary") or {}
    for key in _SUMMARY_KEYS:
        out[key] = layer.get(key, nested.get(key))
    out["ls_rms"] = layer.get("ls_rms")
    out["clamped_fraction"] = layer.get("clamped_fraction")
    return out


def decode_entry(entry: Entry, layer: str | None = None) -> dict[str, Any]:
    """A stream entry as the API shows it; ``layer`` keeps only that layer."""
    entry_id, fields = entry
    layers = [_flat_layer(x) for x in orjson.loads(fields.get(b"layers", b"[]"))]
    if layer is not None:
        layers = [x for x in layers if x["name"] == layer]
    metrics = fields.get(b"metrics")
    return {
        "id": entry_id.decode(),
        "step": int(fields[b"step"]),
        "time": float(fields[b"t"]) if b"t" in fields else None,
        "metrics": orjson.loads(metrics) if metrics else None,
        "layers": layers,
    }


async def read_latest(redis: Redis, prefix: str, name: str, limit: int) -> list[Entry]:
    """The newest ``limit`` entries, oldest first."""
    newest = await redis.xrevrange(keys.stats_key(prefix, name), count=limit)
    return list(reversed(newest))


async def read_after_id(redis: Redis, prefix: str, name: str, entry_id: str, limit: int) -> list[Entry]:
    """Up to ``limit`` entries after ``entry_id`` (exclusive), oldest first."""
    return await redis.xrange(keys.stats_key(prefix, name), min=f"({entry_id}", max="+", count=limit)


async def read_after_step(redis: Redis, prefix: str, name: str, step: int, limit: int) -> list[Entry]:
    """Up to ``limit`` entries with a step above ``step``, oldest first. Scans back from
    the newest entry and stops at the first one at or below ``step``."""
    key = keys.stats_key(prefix, name)
    newer: list[Entry] = []
    cursor = "+"
    while True:
        chunk = await redis.xrevrange(key, max=cursor, count=_SCAN_CHUNK)
        for entry in chunk:
            if int(entry[1][b"step"]) <= step:
                return list(reversed(newer))[:limit]
            newer.append(entry)
        if len(chunk) < _SCAN_CHUNK:
            return list(reversed(newer))[:limit]
        cursor = f"({chunk[-1][0].decode()}"


async def last_id(redis: Redis, prefix: str, name: str) -> str:
    """The newest entry's id, or ``0-0`` for an empty stream: where "from now" starts."""
    return await streams.newest_id(redis, keys.stats_key(prefix, name))


async def wait_after(
    redis: Redis, prefix: str, name: str, entry_id: str, block_ms: int, count: int = 100
) -> list[Entry]:
    """Entries after ``entry_id``, waiting up to ``block_ms`` for one (XREAD BLOCK);
    an empty list when none came. Keep ``block_ms`` under the client's socket timeout."""
    return await streams.read_after(redis, keys.stats_key(prefix, name), entry_id, block_ms, count)


async def model_listed(redis: Redis, prefix: str, name: str) -> bool:
    return bool(await redis.hexists(keys.catalog_key(prefix), name))
