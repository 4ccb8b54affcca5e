"""Stream states: exact persistence, determinism, rollback, validation, bounded memory."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model.learner import (
    InvalidSampleError,
    NonFinitePredictionError,
    NonFiniteStepError,
    OnlineLearner,
    StepFailedError,
)
from model.stream import StatefulRNN
from model.stream_fast import NumpyWindow
from model.stream_state import StreamLayout, StreamState

SPEC: dict[str, Any] = {
    "name": "s",
    "task": "regression",
    "input_shape": [2],
    "network": {"stateful": True, "hidden": [6, 4], "bptt": 3},
}
CLS_SPEC: dict[str, Any] = {**SPEC, "task": "classification", "num_classes": 3, "optimizer": {"kind": "sgd"}}
ROOT = Path(__file__).resolve().parents[2]


def _calls(n: int, seed: int = 0) -> list[tuple[str, np.ndarray, float | None]]:
    """Interleaved steps of three streams, some without labels."""
    rng = np.random.default_rng(seed)
    names = ["a", "b", "c"]
    out = []
    for i in range(n):
        y = None if i % 4 == 3 else float(rng.integers(3))
        out.append((names[int(rng.integers(3))], (rng.normal(size=2) * 5 + 1).astype(np.float32), y))
    return out


def _run(
    learner: OnlineLearner, calls: list, states: dict[str, StreamState | None] | None = None
) -> tuple[dict[str, StreamState | None], list[Any]]:
    states = dict(states or {})
    results = []
    for name, x, y in calls:
        states[name], r = learner.stream_step(states.get(name), x, y)
        results.append(r)
    return states, results


def _digest(learner: OnlineLearner, states: dict[str, StreamState | None]) -> str:
    h = hashlib.sha256(learner.state_bytes())
    for name in sorted(states):
        state = states[name]
        assert state is not None
        h.update(learner.stream_state_bytes(state))
    return h.hexdigest()


@pytest.mark.parametrize("spec", [SPEC, CLS_SPEC], ids=["regression", "classification"])
def test_save_and_restore_mid_stream_continues_bit_for_bit(spec: dict[str, Any]) -> None:
    calls = _calls(40, seed=1)
    original = OnlineLearner(spec)
    states, _ = _run(original, calls[:20])
    blobs = {k: original.stream_state_bytes(v) for k, v in states.items() if v is not None}
    restored = OnlineLearner.from_state_bytes(original.state_bytes())
    restored_states = {k: restored.stream_state_from_bytes(b) for k, b in blobs.items()}
    for k in blobs:
        assert restored.stream_state_bytes(restored_states[k]) == blobs[k]
    a_states, a = _run(original, calls[20:], states)
    b_states, b = _run(restored, calls[20:], restored_states)  # type: ignore[arg-type]
    assert a == b  # t, prediction (with probabilities), loss, step: all equal
    assert _digest(original, a_states) == _digest(restored, b_states)


def test_a_sequence_of_calls_gives_the_same_bytes_in_a_fresh_process() -> None:
    script = (
        "import json, sys; sys.path.insert(0, sys.argv[1]);"
        "from tests.model.test_stream_state import _calls, _digest, _run, CLS_SPEC;"
        "from model.learner import OnlineLearner;"
        "import torch; torch.set_num_threads(1);"
        "l = OnlineLearner(CLS_SPEC); s, _ = _run(l, _calls(25, seed=4)); print(_digest(l, s))"
    )
    torch.set_num_threads(1)
    learner = OnlineLearner(CLS_SPEC)
    states, _ = _run(learner, _calls(25, seed=4))
    here = _digest(learner, states)
    again = OnlineLearner(CLS_SPEC)
    assert _digest(again, _run(again, _calls(25, seed=4))[0]) == here
    there = subprocess.run(
        [sys.executable, "-c", script, str(ROOT)], capture_output=True, text=True, check=True, timeout=120
    ).stdout.strip()
    assert there == here


def test_parts_are_deterministic_and_checked_against_the_model() -> None:
    learner = OnlineLearner(SPEC)
    states, _ = _run(learner, _calls(12, seed=2))
    state = states["a"]
    assert state is not None
    tensors, meta = state.to_parts()
    assert sorted(tensors) == ["h0", "hidden", "inputs", "mu", "var"]
    assert meta == {"format": 1, "t": state.t, "steps": len(state.steps)}
    again = learner.stream_state_from_parts(tensors, meta)
    assert learner.stream_state_bytes(again) == learner.stream_state_bytes(state)
    bad_cases = [
        ({**tensors, "h0": torch.zeros(9)}, meta),
        ({k: v for k, v in tensors.items() if k != "mu"}, meta),
        ({**tensors, "inputs": tensors["inputs"].double()}, meta),
        ({**tensors, "hidden": tensors["hidden"] * float("nan")}, meta),
        (tensors, {**meta, "format": 2}),
        (tensors, {**meta, "steps": len(state.steps) + 1}),
        (tensors, {**meta, "t": 0}),
    ]
    for bad_tensors, bad_meta in bad_cases:
        with pytest.raises(ValueError):
            learner.stream_state_from_parts(bad_tensors, bad_meta)
    other = OnlineLearner({**SPEC, "network": {**SPEC["network"], "hidden": [5]}})
    with pytest.raises(ValueError):
        other.stream_state_from_parts(tensors, meta)
    with pytest.raises(ValueError):
        learner.stream_state_from_bytes(b"not a state")


def _assert_unchanged(learner: OnlineLearner, before: bytes, state: StreamState, state_before: bytes) -> None:
    assert learner.state_bytes() == before
    assert learner.stream_state_bytes(state) == state_before


def test_a_non_finite_loss_rolls_back_model_and_stream_and_the_stream_continues_as_if_never_sent() -> None:
    calls = _calls(10, seed=5)
    a, b = OnlineLearner(SPEC), OnlineLearner(SPEC)
    sa, _ = _run(a, calls)
    sb, _ = _run(b, calls)
    state = sa["a"]
    assert state is not None
    before, state_before = a.state_bytes(), a.stream_state_bytes(state)
    with pytest.raises(NonFiniteStepError, match="non-finite loss"):
        a.stream_step(state, np.ones(2), 3e38)  # finite y whose squared error overflows
    _assert_unchanged(a, before, state, state_before)
    assert _run(a, calls, sa)[1] == _run(b, calls, sb)[1]
    assert _digest(a, sa) == _digest(b, sb)


def test_non_finite_weights_after_the_update_roll_back_the_stream_step() -> None:
    learner = OnlineLearner(SPEC)
    states, _ = _run(learner, _calls(6, seed=6))
    state = states["b"]
    assert state is not None
    before, state_before = learner.state_bytes(), learner.stream_state_bytes(state)
    for group in learner.optimizer.param_groups:
        group["weight_decay"] = 1e308
    with pytest.raises(NonFiniteStepError, match="non-finite weights"):
        learner.stream_step(state, np.ones(2), 0.5)
    for group in learner.optimizer.param_groups:
        group["weight_decay"] = 0.0
    _assert_unchanged(learner, before, state, state_before)


@pytest.mark.parametrize("path", ["eager", "fast"])
def test_a_failing_window_rolls_back_the_arrival_too(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    learner = OnlineLearner(SPEC, path=path)  # type: ignore[arg-type]
    states, _ = _run(learner, _calls(6, seed=7))
    state = states["c"]
    assert state is not None
    before, state_before = learner.state_bytes(), learner.stream_state_bytes(state)

    def boom(*args: Any) -> None:
        raise MemoryError("no memory for the window")

    monkeypatch.setattr(StatefulRNN, "window", boom)
    monkeypatch.setattr(NumpyWindow, "loss_and_grads", boom)
    with pytest.raises(StepFailedError, match="MemoryError"):
        learner.stream_step(state, np.ones(2), 0.5)
    _assert_unchanged(learner, before, state, state_before)


def test_a_non_finite_output_without_label_raises_and_changes_nothing() -> None:
    spec = {**SPEC, "network": {**SPEC["network"], "input_norm": "none"}, "norm": {"kind": "none"}}
    learner = OnlineLearner(spec)
    state, _ = learner.stream_step(None, np.ones(2))
    before, state_before = learner.state_bytes(), learner.stream_state_bytes(state)
    with torch.no_grad():
        learner.network.head.weight.fill_(float("inf"))
    with pytest.raises(NonFinitePredictionError):
        learner.stream_step(state, np.ones(2))
    with pytest.raises(NonFiniteStepError):
        learner.stream_step(state, np.ones(2), 1.0)
    assert learner.stream_state_bytes(state) == state_before and learner.step == 0
    assert learner.state_bytes() != before  # only the weights this test changed


@pytest.mark.parametrize(
    ("x", "y", "state"),
    [
        ([1.0], 0.0, None),
        ([1.0, float("nan")], 0.0, None),
        (["a", 1.0], None, None),
        ([1.0, 2.0], [1.0, 2.0], None),
        ([1.0, 2.0], float("inf"), None),
        ([1.0, 2.0], 0.0, "not a state"),
        ([1.0, 2.0], 0.0, StreamState.empty(StreamLayout(2, (5,), 3, True))),
    ],
)
def test_invalid_inputs_are_refused_before_anything_changes(x: Any, y: Any, state: Any) -> None:
    learner = OnlineLearner(SPEC)
    _run(learner, _calls(5, seed=8))
    before = learner.state_bytes()
    with pytest.raises(InvalidSampleError):
        learner.stream_step(state, x, y)
    assert learner.state_bytes() == before


def test_memory_per_stream_is_bounded_by_the_formula() -> None:
    learner = OnlineLearner(SPEC)
    layout = learner.stream_layout
    assert layout is not None
    f, h, k = 2, 10, 3
    assert layout.max_nbytes == 4 * (h + k * (f + 3 * h))
    state = None
    sizes = []
    for i, x in enumerate(np.random.default_rng(0).normal(size=(4 * k, 2))):
        state, _ = learner.stream_step(state, x, 0.1 if i % 2 else None)
        sizes.append(state.nbytes)
        assert state.nbytes == layout.nbytes(min(i + 1, k))
        assert 0 < len(learner.stream_state_bytes(state)) - state.nbytes < 1024  # a small header
        assert len(state.steps) == min(i + 1, k)
    assert max(sizes) == sizes[-1] == layout.max_nbytes
    layer_norm = OnlineLearner({**SPEC, "norm": {"kind": "layer"}}).stream_layout
    assert layer_norm is not None and layer_norm.max_nbytes == 4 * (h + k * (f + h))
