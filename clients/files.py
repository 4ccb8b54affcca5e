"""Read samples from CSV, NPZ or JSON-lines files, lazily, for the CLI's ``learn`` and
``predict``: one ``(x, y)`` pair at a time, so files larger than memory stream through."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Column or field names taken as the label when ``--label`` is not given.
LABEL_NAMES = ("label", "y", "target", "class")
FORMATS = ("csv", "npz", "jsonl")


@dataclass
class SampleFile:
    """A file's samples: ``pairs()`` yields ``(x, y)``, with ``y`` None when unlabelled."""

    path: Path
    format: str
    label: str | None
    total: int | None

    def pairs(self) -> Iterator[tuple[list[Any], Any]]:
        reader = {"csv": _csv_pairs, "npz": _npz_pairs, "jsonl": _jsonl_pairs}[self.format]
        return reader(self.path, self.label)


def detect_format(path: Path, fmt: str | None = None) -> str:
    """The format named, else the one the extension says (``.json``/``.ndjson`` are JSON lines)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
        return fmt
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("jsonl", "json", "ndjson"):
        return "jsonl"
    if suffix in FORMATS:
        return suffix
    raise ValueError(f"cannot tell the format of {path.name}; pass --format {'|'.join(FORMATS)}")


def open_samples(path: Path, *, label: str | None, labelled: bool, fmt: str | None = None) -> SampleFile:
    """Describe ``path``'s samples. ``labelled`` (learning) means a label must be found: the
    ``label`` column or field, one named like :data:`LABEL_NAMES`, or a CSV's last column."""
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    fmt = detect_format(path, fmt)
    if fmt == "csv":
        label, total = _csv_label(path, label, labelled)
    elif fmt == "npz":
        label, total = _npz_label(path, label, labelled)
    else:
        label, total = _jsonl_label(path, label, labelled)
    return SampleFile(path, fmt, label, total)


def label_value(value: Any) -> Any:
    """A label as JSON: integral numbers become ints, so class indices are accepted."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# --------------------------------------------------------------------------- CSV
def _csv_header(path: Path) -> list[str] | None:
    """The first row if it is a header (holds something that is not a number)."""
    with path.open(newline="") as f:
        first = next(csv.reader(f), None)
    if first is None:
        raise ValueError(f"{path.name} is empty")
    try:
        [float(cell) for cell in first]
    except ValueError:
        return [cell.strip() for cell in first]
    return None


def _csv_label(path: Path, label: str | None, labelled: bool) -> tuple[str | None, int]:
    header = _csv_header(path)
    with path.open(newline="") as f:
        rows = sum(1 for line in f if line.strip())
    total = rows - (header is not None)
    if label is None:
        named = [n for n in LABEL_NAMES if header and n in header]
        label = named[0] if named else ("-1" if labelled else None)
    elif header is None or label not in header:
        try:
            int(label)
        except ValueError:
            raise ValueError(f"{path.name} has no column {label!r} (columns: {header})") from None
    return label, total


def _column_index(label: str, header: list[str] | None, width: int) -> int:
    if header is not None and label in header:
        return header.index(label)
    index = int(label)
    if not -width <= index < width:
        raise ValueError(f"label column {index} is out of range for {width} columns")
    return index % width


def _csv_pairs(path: Path, label: str | None) -> Iterator[tuple[list[Any], Any]]:
    header = _csv_header(path)
    with path.open(newline="") as f:
        reader = csv.reader(f)
        if header is not None:
            next(reader)
        index: int | None = None
        for line, row in enumerate(reader, start=2 if header else 1):
            if not row:
                continue
            if label is not None and index is None:
                index = _column_index(label, header, len(row))
            try:
                numbers = [float(cell) for cell in row]
            except ValueError as exc:
                raise ValueError(f"{path.name}, line {line}: {exc}") from None
            y = None if index is None else label_value(numbers.pop(index))
            yield numbers, y


# --------------------------------------------------------------------------- NPZ
def _npz_keys(path: Path) -> list[str]:
    import numpy as np  # optional at import time: only NPZ files need it

    with np.load(path) as data:
        return list(data.files)


def _npz_label(path: Path, label: str | None, labelled: bool) -> tuple[str | None, int]:
    import numpy as np

    keys = _npz_keys(path)
    x_key = _npz_x_key(path, keys, label)
    if label is None:
        named = [k for k in (*LABEL_NAMES, "Y", "labels") if k in keys and k != x_key]
        label = named[0] if named else None
    elif label not in keys:
        raise ValueError(f"{path.name} has no array {label!r} (arrays: {keys})")
    if labelled and label is None:
        raise ValueError(f"{path.name}: no label array found; name it with --label (arrays: {keys})")
    with np.load(path) as data:
        total = len(data[x_key])
        if label is not None and len(data[label]) != total:
            raise ValueError(f"{path.name}: {x_key} has {total} rows but {label} has {len(data[label])}")
    return label, total


def _npz_x_key(path: Path, keys: list[str], label: str | None) -> str:
    for key in ("x", "X", "data", "inputs"):
        if key in keys:
            return key
    others = [k for k in keys if k != label and k not in LABEL_NAMES]
    if len(others) != 1:
        raise ValueError(f"{path.name}: name the inputs array 'x' (arrays: {keys})")
    return others[0]


def _npz_pairs(path: Path, label: str | None) -> Iterator[tuple[list[Any], Any]]:
    import numpy as np

    with np.load(path) as data:
        xs = data[_npz_x_key(path, list(data.files), label)]
        ys = data[label] if label is not None else None
    for i in range(len(xs)):
        yield xs[i].tolist(), None if ys is None else label_value(ys[i].tolist())


# ---------------------------------------------------------------------- JSON lines
def _jsonl_label(path: Path, label: str | None, labelled: bool) -> tuple[str | None, int]:
    first: dict[str, Any] | None = None
    total = 0
    with path.open() as f:
        for line in f:
            if line.strip():
                total += 1
                if first is None:
                    first = json.loads(line)
    if not isinstance(first, dict):
        raise ValueError(f"{path.name}: expected one JSON object per line")
    if label is None:
        named = [n for n in LABEL_NAMES if n in first]
        label = named[0] if named else None
    elif label not in first:
        raise ValueError(f"{path.name} has no field {label!r} (fields: {sorted(first)})")
    if labelled and label is None:
        raise ValueError(f"{path.name}: no label field found; name it with --label")
    return label, total


def _jsonl_pairs(path: Path, label: str | None) -> Iterator[tuple[list[Any], Any]]:
    """Lines are ``{"x": [...], "y": ...}``, or flat objects whose other fields are the features."""
    with path.open() as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError(f"{path.name}, line {number}: expected a JSON object")
            y = obj.pop(label, None) if label is not None else None
            if label is not None and y is None:
                raise ValueError(f"{path.name}, line {number}: no {label!r}")
            x = obj["x"] if "x" in obj else list(obj.values())
            yield x, y
