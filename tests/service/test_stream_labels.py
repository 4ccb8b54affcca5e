"""Late labels of stateful rnn steps (stream_labels.py, live.py, routes/streams.py and
routes/labels.py): a step without y takes ``label_later`` (or a client's
``prediction_id``), its window waits in the model, and its label learns from that window
later, in the order labels arrive, scored against the prediction that was served. The
answers equal an in-process learner driven the same way, bit for bit; ids are checked by
applying the log (404/409, nothing applied); the TTL and the bound are functions of the
log; the waiting windows survive a kill -9 and work through any replica."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from model.learner import OnlineLearner
from model.stream_state import StreamState
from service.config import Settings
from service.store import keys
from tests.service.conftest import create
from tests.service.replicas import Replicas
from tests.service.servers import ProcessServer, ThreadServer, wait_for
from tests.service.test_ordering import _service_env
from tests.service.test_streams import stateful_spec

pytestmark = pytest.mark.cluster  # also against a real Redis Cluster


class LateReference:
    """The learner in process: steps kept by hand, late labels through ``stream_learn``."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.learner = OnlineLearner(spec)
        self.states: dict[str, StreamState] = {}
        self.waiting: dict[str, tuple[StreamState, Any]] = {}

    def step(self, stream: str, x: list[float], pid: str | None = None, y: Any = None) -> dict[str, Any]:
        state, r = self.learner.stream_step(self.states.get(stream), x, y)
        self.states[stream] = state
        out: dict[str, Any] = {"stream": stream, "t": r.t, "prediction": r.prediction.prediction}
        if r.prediction.probabilities is not None:
            out["probabilities"] = r.prediction.probabilities
        if r.loss is not None:
            out["loss"] = r.loss
        out["step"] = r.step
        if pid is not None:
            out["prediction_id"] = pid
            self.waiting[pid] = (state, r.prediction.prediction)
        return out

    def label(self, pid: str, y: Any) -> dict[str, Any]:
        window, served = self.waiting.pop(pid)
        r = self.learner.stream_learn(window, y, served)
        return {"step": r.step, "loss": r.loss, "prediction": served}


def _step(c: httpx.Client, stream: str, body: dict[str, Any], model: str = "s") -> httpx.Response:
    return c.post(f"/v1/models/{model}/streams/{stream}/step", json=body)


def _drive(c: httpx.Client, ref: LateReference, n: int, seed: int, model: str = "s") -> list[tuple[str, int]]:
    """``n`` steps over three streams, every other one waiting for its label (server ids
    and clients' ids mixed) and labels sent later, out of order: checked against ``ref``.
    Returns the labels still to send."""
    rng = random.Random(seed)
    todo: list[tuple[str, int]] = []
    for i in range(n):
        stream = rng.choice(["a", "b", "c"])
        x = [rng.uniform(-2, 2), rng.uniform(-2, 2)]
        body: dict[str, Any] = {"x": x}
        if i % 2 == 0:
            if i % 4 == 0:
                body["prediction_id"] = f"{model}-{seed}-{i}"
            else:
                body["label_later"] = True
        elif i % 3 == 0:
            body["y"] = int(x[0] > 0)
        r = _step(c, stream, body, model)
        assert r.status_code == 200, r.text
        got = r.json()
        pid = got.get("prediction_id")
        assert got == ref.step(stream, x, pid, body.get("y"))
        if pid is not None:
            todo.append((pid, int(x[0] > 0)))
        if todo and rng.random() < 0.4:  # a label arrives, not necessarily the oldest's
            lpid, y = todo.pop(rng.randrange(len(todo)))
            r = c.post(f"/v1/models/{model}/labels", json={"prediction_id": lpid, "y": y})
            assert r.status_code == 200, r.text
            assert r.json() == ref.label(lpid, y)
    return todo


def test_late_labels_equal_an_in_process_learner(client: httpx.Client) -> None:
    spec = stateful_spec()
    create(client, spec)
    ref = LateReference(spec)
    todo = _drive(client, ref, 40, seed=1)
    assert len(todo) >= 3
    pending = client.get("/v1/models/s/metrics").json()
    assert pending["pending_labels"] == len(todo)
    received = pending["labels_received"]
    labels = [{"prediction_id": pid, "y": y} for pid, y in reversed(todo)]
    r = client.post("/v1/models/s/labels", json={"labels": labels})
    assert r.status_code == 200, r.text
    expected = [ref.label(pid, y) for pid, y in reversed(todo)]
    assert r.json() == {"step": expected[-1]["step"], "results": expected}
    metrics = client.get("/v1/models/s/metrics").json()
    assert metrics["pending_labels"] == 0 and metrics["labels_received"] == received + len(todo)
    assert metrics["label_delay_seconds"]["count"] == metrics["labels_received"]
    assert metrics["samples_seen"] == ref.learner.metrics_dict()["samples_seen"]
    assert metrics["accuracy"] == ref.learner.metrics_dict()["accuracy"]  # the served predictions, scored
    assert metrics["streams"]["awaiting_label_bytes"] == 0
    text = client.get("/metrics").text
    assert 'onlinenorm_labels_received_total{model="s"}' in text


def test_ids_that_cannot_be_used_change_nothing(client: httpx.Client, rds: redis.Redis, prefix: str) -> None:
    create(client, stateful_spec())
    first = _step(client, "a", {"x": [0.5, 0.5], "prediction_id": "p-1"})
    assert first.status_code == 200 and first.json()["prediction_id"] == "p-1"
    state = client.get("/v1/models/s").json()
    t = client.get("/v1/models/s/streams/a").json()["t"]
    refusals = [
        (lambda: _step(client, "a", {"x": [0.1, 0.2], "prediction_id": "p-1"}), 409, "already used"),
        (
            lambda: client.post(
                "/v1/models/s/streams/batch",
                json={
                    "steps": [
                        {"stream": "a", "x": [0.1, 0.2], "prediction_id": "p-2"},
                        {"stream": "b", "x": [0.1, 0.2], "prediction_id": "p-2"},
                    ]
                },
            ),
            409,
            "steps[1]: prediction_id 'p-2' appears twice",
        ),
        (lambda: client.post("/v1/models/s/labels", json={"prediction_id": "nope", "y": 1}), 404, "unknown"),
        (
            lambda: client.post(
                "/v1/models/s/labels",
                json={"labels": [{"prediction_id": "p-1", "y": 1}, {"prediction_id": "nope", "y": 0}]},
            ),
            404,
            "labels[1]: prediction 'nope'",
        ),
        (lambda: client.post("/v1/models/s/labels", json={"prediction_id": "p-1", "y": 7}), 422, "y"),
    ]
    for call, status, needle in refusals:
        r = call()
        assert r.status_code == status and needle in r.json()["detail"], r.text
    assert client.get("/v1/models/s").json()["step"] == state["step"]
    assert client.get("/v1/models/s/streams/a").json()["t"] == t
    assert client.get("/v1/models/s/streams/b").status_code == 404
    assert client.get("/v1/models/s/metrics").json()["pending_labels"] == 1
    # The label, then the same label again: 409; with an Idempotency-Key, the same answer.
    headers = {"Idempotency-Key": "late-1"}
    done = client.post("/v1/models/s/labels", json={"prediction_id": "p-1", "y": 1}, headers=headers)
    assert done.status_code == 200 and done.json()["prediction"] == first.json()["prediction"]
    again = client.post("/v1/models/s/labels", json={"prediction_id": "p-1", "y": 1}, headers=headers)
    assert again.status_code == 200 and again.json() == done.json()
    assert again.headers["idempotent-replayed"] == "true"
    r = client.post("/v1/models/s/labels", json={"prediction_id": "p-1", "y": 1})
    assert r.status_code == 409 and "labelled already" in r.json()["detail"]
    r = _step(client, "a", {"x": [0.1, 0.2], "prediction_id": "p-1"})  # a labelled id is used too
    assert r.status_code == 409
    assert client.get("/v1/models/s").json()["step"] == state["step"] + 1
    assert rds.hlen(keys.pending_key(prefix, "s")) == 0  # a stream's windows wait in the model, not Redis


@pytest.fixture
def label_server(make_settings: Callable[..., Settings], request: pytest.FixtureRequest) -> ThreadServer:
    srv = ThreadServer(make_settings(**request.param))
    srv.__enter__()
    request.addfinalizer(lambda: srv.__exit__(None, None, None))
    return srv


@pytest.mark.parametrize("label_server", [{"LABEL_TTL_SECONDS": 0.5}], indirect=True)
def test_a_step_waits_for_its_label_until_the_ttl(label_server: ThreadServer) -> None:
    with label_server.client() as c:
        create(c, stateful_spec())
        pid = _step(c, "a", {"x": [1.0, 0.0], "label_later": True}).json()["prediction_id"]
        time.sleep(0.8)
        r = c.post("/v1/models/s/labels", json={"prediction_id": pid, "y": 1})
        assert r.status_code == 404 and "expired" in r.json()["detail"], r.text
        metrics = c.get("/v1/models/s/metrics").json()
        assert metrics["pending_labels"] == 0 and metrics["labels_expired"] == 1
        assert c.get("/v1/models/s").json()["step"] == 0


@pytest.mark.parametrize("label_server", [{"MAX_PENDING_STREAM_LABELS": 2}], indirect=True)
def test_past_the_bound_the_oldest_waiting_step_is_evicted(label_server: ThreadServer) -> None:
    with label_server.client() as c:
        create(c, stateful_spec())
        ids = [
            _step(c, "a", {"x": [0.2 * i, 0.0], "label_later": True}).json()["prediction_id"]
            for i in range(3)
        ]
        r = c.post("/v1/models/s/labels", json={"prediction_id": ids[0], "y": 1})
        assert r.status_code == 404 and "evicted" in r.json()["detail"], r.text
        for pid in ids[1:]:
            assert c.post("/v1/models/s/labels", json={"prediction_id": pid, "y": 0}).status_code == 200
        metrics = c.get("/v1/models/s/metrics").json()
        assert metrics["labels_evicted"] == 1 and metrics["labels_received"] == 2
        assert metrics["pending_labels"] == 0


@pytest.mark.timeout(180)
def test_waiting_steps_survive_kill_9_exactly(
    redis_url: str, prefix: str, tmp_path: Path, rds: redis.Redis
) -> None:
    env = _service_env(redis_url, prefix, ONLINENORM_SNAPSHOT_EVERY_STEPS="3")
    spec = stateful_spec()
    ref = LateReference(spec)
    srv = ProcessServer(env, tmp_path / "service.log").start()
    try:
        with srv.client() as c:
            create(c, spec)
            todo = _drive(c, ref, 30, seed=2)
            # a snapshot holding waiting windows was written (they share tensors with the streams)
            wait_for(
                lambda: int(rds.hget(keys.snapshot_key(prefix, "s"), "step") or 0) >= 6, 30, "a snapshot"
            )
    finally:
        srv.kill()
    assert len(todo) >= 2
    srv = ProcessServer(env, tmp_path / "service.log").start()
    try:
        with srv.client() as c:
            labels = [{"prediction_id": pid, "y": y} for pid, y in todo]
            r = c.post("/v1/models/s/labels", json={"labels": labels})
            assert r.status_code == 200, r.text
            assert r.json()["results"] == [ref.label(pid, y) for pid, y in todo]  # windows restored exactly
            more = _drive(c, ref, 10, seed=3)  # and everything after goes on as if nothing happened
            assert isinstance(more, list)
    finally:
        srv.stop()


@pytest.mark.timeout(180)
def test_late_stream_labels_through_any_replica(redis_url: str, prefix: str, tmp_path: Path) -> None:
    spec = stateful_spec()
    ref = LateReference(spec)
    with Replicas(redis_url, prefix, tmp_path, 2) as replicas:
        a, b = (httpx.Client(base_url=u, timeout=30) for u in replicas.urls())
        with a, b:
            create(a, spec)
            replicas.wait_owned(["s"])
            ids = []
            for i, via in enumerate([a, b, a, b]):
                x = [0.3 * i, -0.1 * i]
                r = _step(via, "r", {"x": x, "label_later": True})
                assert r.status_code == 200, r.text
                ids.append(r.json()["prediction_id"])
                assert r.json() == ref.step("r", x, ids[-1])
            for i, pid in enumerate(ids):
                r = (b if i % 2 == 0 else a).post(
                    "/v1/models/s/labels", json={"prediction_id": pid, "y": i % 2}
                )
                assert r.status_code == 200, r.text
                assert r.json() == ref.label(pid, i % 2)
