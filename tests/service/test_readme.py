"""The README's example spec (``examples/spec.json``) is a valid model spec, and the
one the README's contract section shows."""

from __future__ import annotations

import json

from model.spec import ModelSpec
from tests.service.servers import REPO


def test_the_example_spec_is_valid() -> None:
    spec = ModelSpec.model_validate(json.loads((REPO / "examples" / "spec.json").read_text()))
    assert spec.name == "digits" and spec.network_kind == "mlp"
    assert "examples/spec.json" in (REPO / "README.md").read_text()
