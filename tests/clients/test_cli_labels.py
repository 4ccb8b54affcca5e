"""``onlinenorm label`` end to end against the REAL service."""

from __future__ import annotations

import json
from pathlib import Path

from clients import Client
from tests.clients.conftest import LiveService
from tests.clients.test_cli import run


def test_label_one_and_a_file(
    live_service: LiveService, client: Client, model_name: str, tmp_path: Path
) -> None:
    client.create_model(name=model_name, task="classification", input_shape=[3], num_classes=2)
    served = [client.predict_one(model_name, [float(i), 1.0, -1.0], label_later=True) for i in range(4)]
    code, out, err = run(live_service, "label", model_name, served[0].prediction_id, "1")
    assert code == 0, err
    assert json.loads(out) == {"step": 1, "loss": json.loads(out)["loss"], "prediction": served[0].prediction}
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text(
        "prediction_id,y\n" + "".join(f"{p.prediction_id},{i % 2}\n" for i, p in enumerate(served[1:3]))
    )
    code, out, err = run(live_service, "label", model_name, "--file", str(csv_file))
    assert code == 0, err
    assert "learned 2 labels" in out and "step 3" in out
    jsonl = tmp_path / "labels.jsonl"
    jsonl.write_text(json.dumps({"prediction_id": served[3].prediction_id, "y": 0}) + "\n")
    code, out, err = run(live_service, "label", model_name, "--file", str(jsonl))
    assert code == 0 and "step 4" in out, err
    # Errors name the problem; nothing is learned.
    code, out, err = run(live_service, "label", model_name, served[0].prediction_id, "1")
    assert code != 0 and "labelled already" in (out + err)
    code, out, err = run(live_service, "label", model_name)
    assert code != 0 and "PREDICTION_ID" in (out + err)
    assert client.get_model(model_name).step == 4


def test_stream_replays_a_csv_of_events(
    live_service: LiveService, client: Client, model_name: str, tmp_path: Path
) -> None:
    client.create_model(
        name=model_name,
        task="classification",
        input_shape=[2],
        num_classes=2,
        network={"kind": "rnn", "stateful": True, "hidden": [8], "bptt": 4},
    )
    rows = ["device,a,b,label"]
    for i in range(30):
        label = "" if i % 3 else str(i % 2)
        rows.append(f"dev-{i % 3},{i * 0.1:.2f},{(-1) ** i},{label}")
    events = tmp_path / "events.csv"
    events.write_text("\n".join(rows) + "\n")
    code, out, err = run(
        live_service, "stream", model_name, str(events), "--stream-column", "device", "--label", "label"
    )
    assert code == 0, err
    assert "30 steps (10 labelled)" in out
    assert client.get_model(model_name).step == 10
    assert {s.stream: s.t for s in client.list_streams(model_name, page_size=2)} == {
        "dev-0": 10,
        "dev-1": 10,
        "dev-2": 10,
    }
    code, out, err = run(live_service, "stream", model_name, str(events), "--stream-column", "nope")
    assert code != 0 and "no column 'nope'" in (out + err)
    # Late labels: unlabelled rows with an id wait for theirs, which `label --file` brings.
    rows = ["device,event,a,b,label"] + [f"dev-{i % 2},ev-{i},{i * 0.1:.2f},1.0," for i in range(4)]
    events.write_text("\n".join(rows) + "\n")
    code, out, err = run(
        live_service,
        "stream",
        model_name,
        str(events),
        "--stream-column",
        "device",
        "--label",
        "label",
        "--id-column",
        "event",
    )
    assert code == 0 and "4 steps (0 labelled, 4 waiting for labels)" in out, out + err
    labels = tmp_path / "labels.csv"
    labels.write_text("prediction_id,y\nev-2,1\nev-0,0\n")
    code, out, err = run(live_service, "label", model_name, "--file", str(labels))
    assert code == 0 and "learned 2 labels" in out, out + err
    assert client.get_model(model_name).step == 12
    assert client.metrics(model_name).model_dump()["pending_labels"] == 2
