"""The live streams of one stateful rnn model: each stream's state (hidden states and
window), when it last moved, and the rules that bound them.

Every rule is a function of the log alone, so the owner and a replica replaying the
log reach the same table: a stream idle for longer than ``ONLINENORM_STREAM_TTL_SECONDS``
*by the log time of the step being applied* is forgotten (its next step starts
afresh), and a new stream past ``ONLINENORM_MAX_STREAMS`` evicts the stream idle the
longest. The table is part of the model's snapshot (see :func:`pack` and :func:`unpack`),
with the windows that wait for a late label (:mod:`service.stream_labels`).
"""

from __future__ import annotations

import json
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor

from model.stream_state import StreamState
from service.stream_labels import Awaiting, AwaitingLabels

#: The safetensors metadata key that marks a snapshot holding streams.
_CONTAINER_KEY = "onlinenorm_streams"
_CONTAINER_FORMAT = 2
#: Formats this code reads: 1 had no windows waiting for labels.
_CONTAINER_FORMATS = (1, 2)


@dataclass(frozen=True)
class LiveStream:
    state: StreamState
    updated_ms: int  # the log time of its last step


class StreamTable:
    """Stream id -> :class:`LiveStream`, least recently moved first."""

    def __init__(self, ttl_ms: int, max_streams: int) -> None:
        self.ttl_ms = ttl_ms
        self.max_streams = max_streams
        self._streams: OrderedDict[str, LiveStream] = OrderedDict()
        self.expired = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._streams)

    def sweep(self, now_ms: int) -> None:
        """Forget the streams idle longer than the TTL at log time ``now_ms``."""
        cutoff = now_ms - self.ttl_ms
        while self._streams:
            name, live = next(iter(self._streams.items()))
            if live.updated_ms >= cutoff:
                return
            del self._streams[name]
            self.expired += 1

    def state(self, name: str) -> StreamState | None:
        live = self._streams.get(name)
        return None if live is None else live.state

    def put(self, name: str, state: StreamState, now_ms: int) -> None:
        """Record a stream's new state; a new stream past the bound evicts the idlest."""
        if name in self._streams:
            del self._streams[name]
        elif len(self._streams) >= self.max_streams:
            self._streams.popitem(last=False)
            self.evicted += 1
        self._streams[name] = LiveStream(state, now_ms)

    def reset(self, name: str) -> bool:
        return self._streams.pop(name, None) is not None

    def get(self, name: str, now_ms: int) -> LiveStream | None:
        """A live stream as a reader sees it at ``now_ms`` (idle past the TTL: gone)."""
        live = self._streams.get(name)
        if live is None or live.updated_ms < now_ms - self.ttl_ms:
            return None
        return live

    def page(
        self, after: str | None, limit: int, now_ms: int
    ) -> tuple[list[tuple[str, LiveStream]], str | None]:
        """Live streams in name order after ``after``; the cursor of the next page, if any."""
        cutoff = now_ms - self.ttl_ms
        names = sorted(
            n for n, s in self._streams.items() if s.updated_ms >= cutoff and (after is None or n > after)
        )
        chosen = names[:limit]
        cursor = chosen[-1] if len(names) > limit else None
        return [(n, self._streams[n]) for n in chosen], cursor

    def nbytes(self) -> int:
        return sum(live.state.nbytes for live in self._streams.values())

    def items(self) -> list[tuple[str, LiveStream]]:
        return list(self._streams.items())

    def replace(self, streams: list[tuple[str, LiveStream]], expired: int, evicted: int) -> None:
        self._streams = OrderedDict(streams)
        self.expired, self.evicted = expired, evicted


def _own(t: Tensor) -> Tensor:
    """A tensor with storage of its own: states share tensors (a stream's ``h0`` is a
    hidden state of an older step, and a waiting window shares them with its stream),
    and safetensors refuses to save shared storage."""
    return t.clone(memory_format=torch.contiguous_format)


def pack(learner_state: bytes, table: StreamTable, awaiting: AwaitingLabels) -> bytes:
    """The learner's state bytes, every stream's state and every window waiting for its
    label in one safetensors file: the learner's bytes as a uint8 tensor, each stream's
    tensors under ``s<i>.``, each waiting window's under ``p<i>.``, and the ids, times,
    metas and served predictions (in table order) as JSON metadata."""
    tensors: dict[str, Tensor] = {"learner": torch.frombuffer(bytearray(learner_state), dtype=torch.uint8)}
    streams = []
    for i, (name, live) in enumerate(table.items()):
        parts, meta = live.state.to_parts()
        tensors.update({f"s{i}.{k}": _own(v) for k, v in parts.items()})
        streams.append([name, live.updated_ms, meta, sorted(parts)])
    waiting = []
    for i, (pid, entry) in enumerate(awaiting.items()):
        parts, meta = entry.state.to_parts()
        tensors.update({f"p{i}.{k}": _own(v) for k, v in parts.items()})
        waiting.append([pid, entry.at_ms, entry.served, meta, sorted(parts)])
    meta_json = json.dumps(
        {
            "format": _CONTAINER_FORMAT,
            "streams": streams,
            "expired": table.expired,
            "evicted": table.evicted,
            "awaiting": waiting,
            "labels": awaiting.to_meta(),
        }
    )
    return save_tensors(tensors, metadata={_CONTAINER_KEY: meta_json})


def _metadata(data: bytes) -> dict[str, str]:
    """A safetensors file's ``__metadata__`` (its header is 8 bytes of length, then JSON)."""
    if len(data) < 8:
        return {}
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        return {}
    try:
        header = json.loads(data[8 : 8 + length])
    except ValueError:
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def unpack(
    data: bytes,
    table: StreamTable,
    awaiting: AwaitingLabels,
    restore: Callable[[dict[str, Tensor], dict[str, Any]], StreamState],
) -> bytes:
    """The learner's bytes out of :func:`pack`'s file, the streams loaded into ``table``
    and the waiting windows into ``awaiting`` (``restore`` checks each state against the
    model). Bytes without streams (a model's first snapshot) are the learner's own: both
    are emptied."""
    meta_json = _metadata(data).get(_CONTAINER_KEY)
    if meta_json is None:
        table.replace([], 0, 0)
        awaiting.replace([], None)
        return data
    meta = json.loads(meta_json)
    if meta.get("format") not in _CONTAINER_FORMATS:
        raise ValueError(f"unsupported stream snapshot format {meta.get('format')!r}")
    tensors = load_tensors(data)
    streams = []
    for i, (name, updated_ms, part_meta, names) in enumerate(meta["streams"]):
        parts = {k: tensors[f"s{i}.{k}"] for k in names}
        streams.append((str(name), LiveStream(restore(parts, part_meta), int(updated_ms))))
    waiting = []
    for i, (pid, at_ms, served, part_meta, names) in enumerate(meta.get("awaiting", [])):
        parts = {k: tensors[f"p{i}.{k}"] for k in names}
        waiting.append((str(pid), Awaiting(restore(parts, part_meta), dict(served), int(at_ms))))
    table.replace(streams, int(meta["expired"]), int(meta["evicted"]))
    awaiting.replace(waiting, meta.get("labels"))
    return tensors["learner"].numpy().tobytes()
