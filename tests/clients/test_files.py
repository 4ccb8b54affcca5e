"""The CLI's sample readers: CSV (with or without header, label by name or index),
NPZ and JSON lines, streamed as (x, y) pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clients.files import detect_format, open_samples


def test_csv_with_header_takes_the_label_column_by_name(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,label,b\n1,2,3\n4.5,0,6\n")
    samples = open_samples(path, label=None, labelled=True)
    assert samples.label == "label" and samples.total == 2
    assert list(samples.pairs()) == [([1.0, 3.0], 2), ([4.5, 6.0], 0)]
    other = open_samples(path, label="b", labelled=True)
    assert list(other.pairs()) == [([1.0, 2.0], 3), ([4.5, 0.0], 6)]


def test_csv_without_header_defaults_to_the_last_column(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("1,2,3.0\n4,5,1\n\n")
    samples = open_samples(path, label=None, labelled=True)
    assert samples.total == 2
    pairs = list(samples.pairs())
    assert pairs == [([1.0, 2.0], 3), ([4.0, 5.0], 1)]
    assert isinstance(pairs[0][1], int)  # 3.0 is sent as the class index 3
    assert next(open_samples(path, label="0", labelled=True).pairs()) == ([2.0, 3.0], 1)
    assert next(open_samples(path, label=None, labelled=False).pairs()) == ([1.0, 2.0, 3.0], None)


def test_csv_errors_name_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,b\n1,2\n3,oops\n")
    with pytest.raises(ValueError, match="no column 'c'"):
        open_samples(path, label="c", labelled=True)
    with pytest.raises(ValueError, match="line 3"):
        list(open_samples(path, label="b", labelled=True).pairs())
    with pytest.raises(ValueError, match="no such file"):
        open_samples(tmp_path / "missing.csv", label=None, labelled=True)


def test_npz_arrays(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.arange(6, dtype=np.float32).reshape(3, 2), y=np.array([0, 1, 0]))
    samples = open_samples(path, label=None, labelled=True)
    assert samples.label == "y" and samples.total == 3
    assert list(samples.pairs()) == [([0.0, 1.0], 0), ([2.0, 3.0], 1), ([4.0, 5.0], 0)]
    np.savez(path, inputs=np.zeros((2, 2)), classes=np.array([1, 1]))
    assert list(open_samples(path, label="classes", labelled=True).pairs())[1] == ([0.0, 0.0], 1)
    with pytest.raises(ValueError, match="no label array"):
        open_samples(path, label=None, labelled=True)


def test_json_lines_nested_and_flat(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"x": [1, 2], "y": 1}\n\n{"x": [3, 4], "y": 0}\n')
    samples = open_samples(path, label=None, labelled=True)
    assert samples.total == 2
    assert list(samples.pairs()) == [([1, 2], 1), ([3, 4], 0)]
    flat = tmp_path / "flat.json"
    flat.write_text('{"f1": 1.5, "f2": 2, "target": 3}\n')
    assert list(open_samples(flat, label=None, labelled=True).pairs()) == [([1.5, 2], 3)]
    with pytest.raises(ValueError, match="no field 'z'"):
        open_samples(flat, label="z", labelled=True)


def test_format_detection() -> None:
    assert detect_format(Path("a.CSV")) == "csv"
    assert detect_format(Path("a.ndjson")) == "jsonl"
    assert detect_format(Path("a.data"), "npz") == "npz"
    with pytest.raises(ValueError, match="--format"):
        detect_format(Path("a.data"))
