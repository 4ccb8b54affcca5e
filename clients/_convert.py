"""Turn what users hold (lists, numpy arrays, torch tensors, scalars) into JSON values,
and cut streams into request-sized chunks. Duck-typed: numpy and torch are never imported."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from typing import Any


class NonFiniteValueError(ValueError):
    """A NaN or an infinity where JSON can only carry finite numbers."""


def check_finite(value: Any, field: str) -> Any:
    """``value`` (already JSON-ready) unchanged; :class:`NonFiniteValueError` naming
    ``field`` and the position of the first NaN or infinity in it."""
    stack: list[tuple[Any, str]] = [(value, field)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise NonFiniteValueError(f"{where} is {item}: JSON carries finite numbers only")
        if isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in reversed(list(enumerate(item))))
    return value


def to_json_value(value: Any) -> Any:
    """A JSON-ready copy of ``value``: anything with ``.tolist()`` (numpy arrays and
    scalars, torch tensors) is converted by it; lists and tuples element by element."""
    tolist = getattr(value, "tolist", None)
    if callable(tolist) and not isinstance(value, (str, bytes)):
        if hasattr(value, "detach"):  # a torch tensor that requires grad
            value = value.detach()
            tolist = value.tolist
        return tolist()
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    return value


def _is_array(value: Any) -> bool:
    """Sliceable in bulk: a numpy array or torch tensor with at least one axis."""
    shape = getattr(value, "shape", None)
    return shape is not None and len(shape) >= 1 and callable(getattr(value, "tolist", None))


def iter_chunks(values: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """JSON-ready chunks of at most ``size`` items, lazily, in order. Arrays are sliced
    and converted a chunk at a time (fast); other iterables item by item."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1 (got {size})")
    if _is_array(values):
        array: Any = values
        for start in range(0, len(array), size):
            yield to_json_value(array[start : start + size])
        return
    iterator = iter(values)
    while chunk := [to_json_value(v) for v in itertools.islice(iterator, size)]:
        yield chunk


def iter_sample_chunks(xs: Iterable[Any], ys: Iterable[Any], size: int) -> Iterator[list[dict[str, Any]]]:
    """``[{"x": ..., "y": ...}, ...]`` chunks pairing ``xs`` with ``ys``. Unequal lengths
    raise before the first chunk when both have a length, else at the chunk that shows it."""
    if hasattr(xs, "__len__") and hasattr(ys, "__len__") and len(xs) != len(ys):  # type: ignore[arg-type]
        raise ValueError(f"got {len(xs)} inputs but {len(ys)} targets")  # type: ignore[arg-type]
    x_chunks, y_chunks = iter_chunks(xs, size), iter_chunks(ys, size)
    for x_chunk, y_chunk in itertools.zip_longest(x_chunks, y_chunks):
        if x_chunk is None or y_chunk is None or len(x_chunk) != len(y_chunk):
            raise ValueError("xs and ys have different lengths")
        yield [{"x": x, "y": y} for x, y in zip(x_chunk, y_chunk, strict=True)]
