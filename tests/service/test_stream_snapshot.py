"""A stateful rnn's snapshot container (stream_table.pack/unpack): streams and the
windows waiting for late labels come back exactly, with their served predictions and
the labels' counters; a container from before late labels (format 1) still loads."""

from __future__ import annotations

import json

from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from model.learner import OnlineLearner
from service.stream_labels import Awaiting, AwaitingLabels, LabelChange
from service.stream_table import StreamTable, pack, unpack
from tests.service.test_streams import stateful_spec


def _filled() -> tuple[OnlineLearner, StreamTable, AwaitingLabels]:
    learner = OnlineLearner(stateful_spec())
    table, awaiting = StreamTable(10_000, 10), AwaitingLabels(10_000, 10)
    change = LabelChange()
    for i, (stream, x) in enumerate([("a", [1.0, 0.0]), ("b", [0.5, 0.5]), ("a", [0.0, -1.0])]):
        state, r = learner.stream_step(table.state(stream), x)
        table.put(stream, state, 1000 + i)
        served = {"stream": stream, "t": r.t, "prediction": r.prediction.prediction, "step": r.step}
        served["probabilities"] = r.prediction.probabilities
        awaiting.add(f"p{i}", Awaiting(state, served, 1000 + i), change)
    awaiting.take("p1", 2000, change)
    return learner, table, awaiting


def test_streams_and_waiting_windows_round_trip_exactly() -> None:
    learner, table, awaiting = _filled()
    data = pack(learner.state_bytes(), table, awaiting)
    table2, awaiting2 = StreamTable(10_000, 10), AwaitingLabels(10_000, 10)
    assert unpack(data, table2, awaiting2, learner.stream_state_from_parts) == learner.state_bytes()
    assert pack(learner.state_bytes(), table2, awaiting2) == data  # the same state, the same bytes
    assert [p for p, _ in awaiting2.items()] == ["p0", "p2"]
    for (_, w1), (_, w2) in zip(awaiting.items(), awaiting2.items(), strict=True):
        assert w1.served == w2.served and w1.at_ms == w2.at_ms
        assert w1.state.to_parts()[1] == w2.state.to_parts()[1]
    assert awaiting2.counts(1500).labelled == 1 and list(awaiting2.delays) == [(2000 - 1001) / 1000.0]


def test_a_container_from_before_late_labels_loads_with_nothing_waiting() -> None:
    learner, table, awaiting = _filled()
    data = pack(learner.state_bytes(), table, awaiting)
    tensors = {k: v for k, v in load_tensors(data).items() if not k.startswith("p")}
    header_len = int.from_bytes(data[:8], "little")
    meta = json.loads(json.loads(data[8 : 8 + header_len])["__metadata__"]["onlinenorm_streams"])
    old = {"format": 1, "streams": meta["streams"], "expired": meta["expired"], "evicted": meta["evicted"]}
    legacy = save_tensors(tensors, metadata={"onlinenorm_streams": json.dumps(old)})
    table2, awaiting2 = StreamTable(10_000, 10), AwaitingLabels(10_000, 5)
    awaiting2.add("stale", next(iter(awaiting.items()))[1], LabelChange())
    assert unpack(legacy, table2, awaiting2, learner.stream_state_from_parts) == learner.state_bytes()
    assert len(table2) == 2 and len(awaiting2) == 0 and awaiting2.labelled == 0
