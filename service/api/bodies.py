"""Fast request-body handling for the hot routes: orjson parsing (which refuses the
``NaN``/``Infinity`` tokens that Python's json accepts), structural checks with
messages that name the problem, and sample validation by the model's own learner,
without building a pydantic object per number.

Samples are validated once, all of a request's together, with a few numpy calls
(:func:`_vectorized`); only a request that fails that check (or might hold booleans,
which numpy would read as numbers) takes the per-sample path, which names the sample
and the problem. Both give the same float32 values as the learner's own ``check_x``,
which replay uses on the logged JSON.

Nesting is bounded before anything walks it: an input is at most as deep as the model's
``input_shape`` (a flat list is depth 1), a target at most a flat list, so a body nested
a thousand levels deep is refused by name instead of exhausting Python's recursion."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError
from torch import Tensor

from model.learner import InvalidSampleError, OnlineLearner
from service.errors import InvalidInputError, PayloadTooLargeError, readable, validation_errors
from service.idempotency import KEY_PATTERN

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
#: Validate inline below this many numbers; above it, in a worker thread.
_INLINE_NUMBERS = 16384


async def read_json(request: Request) -> Any:
    """The request's JSON body (its Content-Type was checked by
    :class:`service.api.limits.ContentTypeMiddleware` before it got here)."""
    return parse_json(await request.body())


def parse_json(body: bytes) -> Any:
    """``body`` parsed; 422 naming the problem for an empty, non-UTF-8 or malformed one."""
    if not body:
        raise InvalidInputError("empty body: expected a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(_malformed(body, exc)) from exc


async def read_model(request: Request, model: type[M]) -> M:
    """The request's JSON body validated as ``model``; 422 naming every problem (the
    same answer as FastAPI's own body validation, for every malformed body too)."""
    value = await read_json(request)
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        errors = validation_errors(exc.errors(include_url=False, include_context=False))
        for err in errors:
            err["loc"] = ["body", *err.get("loc", ())]
        raise InvalidInputError(readable(errors), errors=errors) from exc


def _malformed(body: bytes, exc: orjson.JSONDecodeError) -> str:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"malformed JSON: the body is not valid UTF-8 (byte {bad.start})"
    if b"NaN" in body or b"Infinity" in body:
        return f"malformed JSON (NaN and Infinity are not JSON): {exc}"
    return f"malformed JSON: {exc}"


def _object(value: Any, fields: tuple[str, ...], where: str) -> dict[str, Any]:
    expected = " and ".join(repr(f) for f in fields)
    if not isinstance(value, dict):
        raise InvalidInputError(f"{where} must be a JSON object with {expected} (got {type(value).__name__})")
    for name in fields:
        if name not in value:
            raise InvalidInputError(f"{where} is missing {name!r}")
    for name in value:
        if name not in fields:
            raise InvalidInputError(f"{where} has an unknown field {name!r} (expected {expected})")
    return value


def sample_fields(body: Any, fields: tuple[str, ...]) -> list[Any]:
    """``{"x": .., "y": ..}`` -> ``[x, y]``."""
    obj = _object(body, fields, "body")
    return [obj[f] for f in fields]


def batch_fields(body: Any, fields: tuple[str, ...], max_samples: int) -> list[list[Any]]:
    """``{"samples": [{"x": .., "y": ..}, ...]}`` -> ``[[x, y], ...]``."""
    samples = _object(body, ("samples",), "body")["samples"]
    if not isinstance(samples, list):
        raise InvalidInputError(f"'samples' must be a list (got {type(samples).__name__})")
    if not samples:
        raise InvalidInputError("'samples' is empty")
    if len(samples) > max_samples:
        raise PayloadTooLargeError(f"{len(samples)} samples in one batch; the limit is {max_samples}")
    out = []
    for i, item in enumerate(samples):
        obj = _object(item, fields, f"samples[{i}]")
        out.append([obj[f] for f in fields])
    return out


_NUMBER_TYPES = (int, float)
#: A target is a number (class index, one regression output) or a flat list of outputs.
_Y_LIMIT = (1, "a number or a flat list of numbers")
_TOO_DEEP = "a list nested too deep"


def _non_number(value: Any, path: str, depth: int) -> str | None:
    """Where JSON that should hold only numbers, in lists at most ``depth`` deep, holds
    something else (a string, a boolean, null, an object, a list nested deeper): numpy
    would quietly convert some of those, and unbounded nesting would exhaust the
    recursion. Never recurses more than ``depth`` levels."""
    if type(value) in _NUMBER_TYPES:
        return None
    if type(value) is list:
        if depth < 1:
            return f"{_TOO_DEEP} at {path}"
        if all(type(v) in _NUMBER_TYPES for v in value):
            return None
        for i, v in enumerate(value):
            found = _non_number(v, f"{path}[{i}]", depth - 1)
            if found:
                return found
        return None
    kind = (
        "null"
        if value is None
        else {"str": "a string", "bool": "a boolean", "dict": "an object"}.get(
            type(value).__name__, type(value).__name__
        )
    )
    return f"{kind} at {path}"


def _check_one(
    value: Any, name: str, where: str, limit: tuple[int, str], check: Callable[[Any], Tensor]
) -> Tensor:
    depth, expected = limit
    problem = _non_number(value, name, depth)
    if problem:
        if problem.startswith(_TOO_DEEP):
            raise InvalidInputError(f"{where}{name} is nested deeper than {expected} ({problem})")
        raise InvalidInputError(f"{where}{name} must hold only numbers (got {problem})")
    try:
        return check(value)
    except InvalidSampleError as exc:
        message = str(exc)  # model/ names the field first ("x has shape ..."); if not, say which
        raise InvalidInputError(
            f"{where}{message if message.startswith(name) else f'{name}: {message}'}"
        ) from exc


def _check(
    learner: OnlineLearner, samples: list[list[Any]], with_y: bool, batch: bool
) -> tuple[list[Tensor], list[Tensor]]:
    xs: list[Tensor] = []
    ys: list[Tensor] = []
    shape = learner.spec.input_shape  # nested to input_shape at most; a flat list is shallower
    x_limit = (len(shape), f"its shape allows: expected shape {shape} (or a flat list)")
    for i, sample in enumerate(samples):
        where = f"samples[{i}]." if batch else ""
        xs.append(_check_one(sample[0], "x", where, x_limit, learner.check_x))
        if with_y:
            ys.append(_check_one(sample[1], "y", where, _Y_LIMIT, learner.check_y))
    return xs, ys


#: Integers up to this size convert to float32 the same through float64 as directly.
_EXACT_INTEGERS = 2.0**53


def _numbers(values: list[Any], rows: int, shape: tuple[int, ...], size: int) -> np.ndarray | None:
    """``values`` (one per sample) as a float32 ``(rows, *shape)`` array, or None unless
    every one is plain finite numbers of the right shape (flat, or nested to ``shape``)."""
    try:
        arr = np.asarray(values[0] if rows == 1 else values)  # one sample: no list around it
    except ValueError:  # ragged
        return None
    kind = arr.dtype.kind
    if kind not in "if" or arr.size != rows * size:
        return None
    if rows == 1:
        each = arr.shape
    elif arr.shape[0] == rows:
        each = arr.shape[1:]
    else:
        return None
    if each != shape and each != (size,):
        return None
    # Below 2**53 a value is finite, fits float32, and if it came as an integer it converts
    # exactly as check_x converts it alone. Integers (int64) always fit float32.
    if kind == "f" and not float(np.abs(arr).max()) < _EXACT_INTEGERS:
        return None
    return arr.astype(np.float32).reshape(rows, *shape)


def _labels(targets: list[Any], classes: int) -> list[int] | None:
    """Class indices as ints (an integral float counts, as in check_y), or None."""
    out = []
    for t in targets:
        kind = type(t)
        if kind is float and t.is_integer():
            t = int(t)
        elif kind is not int:
            return None
        if not 0 <= t < classes:
            return None
        out.append(t)
    return out


def _vectorized(
    learner: OnlineLearner, samples: list[list[Any]], with_y: bool
) -> tuple[list[Any], list[Any]] | None:
    """Every sample checked at once; None if any is not plainly valid. Inputs come back
    as float32 arrays (the learner's ``check_x`` takes them as they are), class labels as
    ints, regression targets as float32 arrays."""
    spec = learner.spec
    rows = len(samples)
    x = _numbers([s[0] for s in samples], rows, tuple(spec.input_shape), spec.input_size)
    if x is None:
        return None
    if not with_y:
        return list(x), []
    targets = [s[1] for s in samples]
    size = spec.output_size
    if spec.task == "classification":
        labels = _labels(targets, size)
        return None if labels is None else (list(x), labels)
    shape = (size,) if type(targets[0]) is list else ()
    if size != 1 and shape == ():
        return None
    y = _numbers(targets, rows, shape, size)
    return None if y is None else (list(x), list(y.reshape(rows, size)))


def may_hold_booleans(raw: bytes) -> bool:
    """Whether a JSON body may hold ``true``/``false`` (numpy would read them as 1 and 0)."""
    return b"true" in raw or b"false" in raw


def _validate(
    learner: OnlineLearner, samples: list[list[Any]], with_y: bool, batch: bool, plain: bool
) -> tuple[list[Tensor], list[Any]]:
    if plain:
        checked = _vectorized(learner, samples, with_y)
        if checked is not None:
            return checked
    return _check(learner, samples, with_y, batch)


async def _maybe_in_thread(numbers: int, fn: Callable[..., T], *args: Any) -> T:
    if numbers <= _INLINE_NUMBERS:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


async def check_samples(
    learner: OnlineLearner,
    samples: list[list[Any]],
    *,
    with_y: bool,
    batch: bool,
    raw: bytes | None = None,
) -> tuple[list[Tensor], list[Any]]:
    """Validate every sample against the model's spec (``check_x`` / ``check_y`` are pure)
    before anything is queued; the message names the sample and the problem. ``raw``, the
    request body the samples were parsed from, lets a body without booleans be checked
    all at once."""
    plain = raw is not None and not may_hold_booleans(raw)
    return await _maybe_in_thread(
        len(samples) * learner.spec.input_size, _validate, learner, samples, with_y, batch, plain
    )


def idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not KEY_PATTERN.match(value):
        raise InvalidInputError("Idempotency-Key must be 1 to 255 printable ASCII characters without spaces")
    return value
