"""examples/digits_walkthrough.py runs against the real service (on a short stream)."""

from __future__ import annotations

import importlib.util
from types import ModuleType

import numpy as np
import pytest
from sklearn.datasets import load_digits

from clients import Client
from tests.clients.conftest import ROOT


def _example() -> ModuleType:
    path = ROOT / "examples" / "digits_walkthrough.py"
    spec = importlib.util.spec_from_file_location("digits_walkthrough", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_walkthrough_learns_three_models_and_cleans_up(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    digits = load_digits()
    xs, ys = digits.data[:60].astype(np.float32), digits.target[:60]
    before = {m.name for m in client.list_models()}
    final = _example().walkthrough(client, xs, ys, chunk=25, seed=0, keep=False)
    assert set(final) == {"online", "layer", "none"}
    assert all(0.0 <= acc <= 1.0 for acc in final.values())
    out = capsys.readouterr().out
    assert "      60" in out and "norm.kind=online" in out
    assert {m.name for m in client.list_models()} == before
