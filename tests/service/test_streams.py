"""Stateful rnn streams (routes/streams.py, stream_table.py, live.py): each stream keeps
its hidden state in the service, steps are prequential and learn by truncated BPTT,
answers equal an in-process learner driven the same way (bit for bit), the bounds and
the TTL are functions of the log, and a stream continues exactly after a kill -9."""

from __future__ import annotations

import math
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

pytestmark = pytest.mark.cluster  # also against a real Redis Cluster


def stateful_spec(name: str = "s", **network: Any) -> dict[str, Any]:
    return {
        "name": name,
        "task": "classification",
        "input_shape": [2],
        "num_classes": 2,
        "network": {"kind": "rnn", "stateful": True, "hidden": [8], "bptt": 3, **network},
    }


def events(n: int, streams: list[str], seed: int = 0, label_every: int = 2) -> list[dict[str, Any]]:
    """Interleaved steps: x depends on the stream's own last input (memory to learn)."""
    rng = random.Random(seed)
    last = {s: 0.0 for s in streams}
    out = []
    for i in range(n):
        stream = rng.choice(streams)
        x = [rng.uniform(-2, 2), last[stream]]
        step: dict[str, Any] = {"stream": stream, "x": x}
        if i % label_every == 0:
            step["y"] = int(last[stream] > 0)
        last[stream] = x[0]
        out.append(step)
    return out


class Reference:
    """The same learner in process, with the stream states kept by hand."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.learner = OnlineLearner(spec)
        self.states: dict[str, StreamState] = {}

    def step(self, e: dict[str, Any]) -> dict[str, Any]:
        state, r = self.learner.stream_step(self.states.get(e["stream"]), e["x"], e.get("y"))
        self.states[e["stream"]] = state
        out: dict[str, Any] = {"stream": e["stream"], "t": r.t, "prediction": r.prediction.prediction}
        if r.prediction.probabilities is not None:
            out["probabilities"] = r.prediction.probabilities
        if r.loss is not None:
            out["loss"] = r.loss
        out["step"] = r.step
        return out


def _step(c: httpx.Client, e: dict[str, Any]) -> httpx.Response:
    body = {k: v for k, v in e.items() if k != "stream"}
    return c.post(f"/v1/models/s/streams/{e['stream']}/step", json=body)


def test_steps_equal_an_in_process_learner(client: httpx.Client) -> None:
    spec = stateful_spec()
    create(client, spec)
    ref = Reference(spec)
    sent = events(30, ["dev-1", "dev-2", "dev-3"])
    for e in sent[:20]:
        r = _step(client, e)
        assert r.status_code == 200, r.text
        assert r.json() == ref.step(e)
    r = client.post("/v1/models/s/streams/batch", json={"steps": sent[20:]})
    assert r.status_code == 200, r.text
    expected = [ref.step(e) for e in sent[20:]]
    assert r.json() == {"step": expected[-1]["step"], "results": expected}
    for stream, state in ref.states.items():
        info = client.get(f"/v1/models/s/streams/{stream}").json()
        assert info["t"] == state.t
    metrics = client.get("/v1/models/s/metrics").json()
    assert metrics["samples_seen"] == ref.learner.metrics_dict()["samples_seen"] == 15
    assert metrics["streams"]["live"] == 3 and metrics["streams"]["max_bytes_per_stream"] > 0
    assert 0 < metrics["streams"]["bytes"] <= 3 * metrics["streams"]["max_bytes_per_stream"]


def test_reset_and_listing(client: httpx.Client) -> None:
    spec = stateful_spec()
    create(client, spec)
    ref = Reference(spec)
    names = [f"st-{i:02d}" for i in range(5)]
    for e in events(15, names, label_every=3):
        assert _step(client, e).json() == ref.step(e)
    live = sorted(ref.states)
    page = client.get("/v1/models/s/streams", params={"limit": 2}).json()
    assert [s["stream"] for s in page["streams"]] == live[:2] and page["next_cursor"] == live[1]
    seen = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/models/s/streams", params=params).json()
        seen += [s["stream"] for s in page["streams"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == live
    # A reset stream starts afresh; the others and the weights are untouched.
    assert client.delete(f"/v1/models/s/streams/{live[0]}").status_code == 204
    assert client.get(f"/v1/models/s/streams/{live[0]}").status_code == 404
    del ref.states[live[0]]
    e = {"stream": live[0], "x": [0.5, -0.5], "y": 1}
    r = _step(client, e).json()
    assert r["t"] == 0 and r == ref.step(e)
    e = {"stream": live[1], "x": [0.1, 0.2]}
    assert _step(client, e).json() == ref.step(e)


def test_bad_steps_change_nothing(client: httpx.Client, rds: redis.Redis, prefix: str) -> None:
    create(client, stateful_spec())
    create(client, {"name": "plain", "task": "classification", "input_shape": [2], "num_classes": 2})
    bad = [
        ({"x": [1.0]}, "shape"),
        ({"x": [1.0, 2.0], "y": 5}, "y"),
        ({"x": [1.0, 2.0], "z": 1}, "unknown field"),
        ({"y": 1}, "missing 'x'"),
        ({"x": [1.0, 2.0], "y": 1, "label_later": True}, "label_later"),
        ({"x": [1.0, 2.0], "y": 1, "prediction_id": "p1"}, "label_later"),
        ({"x": [1.0, 2.0], "label_later": "yes"}, "label_later"),
        ({"x": [1.0, 2.0], "prediction_id": "has space"}, "prediction_id"),
        ({"x": [1.0, "a"]}, "x"),
    ]
    for body, needle in bad:
        r = client.post("/v1/models/s/streams/a/step", json=body)
        assert r.status_code == 422 and needle in r.json()["detail"], (body, r.text)
    assert client.post("/v1/models/s/streams/bad id/step", json={"x": [1.0, 2.0]}).status_code == 422
    r = client.post(
        "/v1/models/s/streams/batch",
        json={"steps": [{"stream": "a", "x": [1, 2]}, {"stream": "?", "x": [1, 2]}]},
    )
    assert r.status_code == 422 and "steps[1].stream" in r.json()["detail"]
    r = client.post("/v1/models/plain/streams/a/step", json={"x": [1.0, 2.0]})
    assert r.status_code == 422 and "not a stateful rnn" in r.json()["detail"]
    assert client.post("/v1/models/s/learn", json={"x": [1.0, 2.0], "y": 1}).status_code == 422
    assert client.post("/v1/models/s/predict", json={"x": [1.0, 2.0]}).status_code == 422
    assert rds.xlen(keys.log_key(prefix, "s")) == 0
    assert client.get("/v1/models/s/streams").json()["streams"] == []


def test_idempotency_key_replays_a_step(client: httpx.Client) -> None:
    create(client, stateful_spec())
    body = {"x": [1.0, 0.5], "y": 1}
    first = client.post("/v1/models/s/streams/a/step", json=body, headers={"Idempotency-Key": "st-1"})
    retry = client.post("/v1/models/s/streams/a/step", json=body, headers={"Idempotency-Key": "st-1"})
    assert retry.status_code == 200 and retry.json() == first.json()
    assert retry.headers["idempotent-replayed"] == "true"
    assert client.get("/v1/models/s/streams/a").json()["t"] == 1


@pytest.fixture
def stream_server(make_settings: Callable[..., Settings], request: pytest.FixtureRequest) -> ThreadServer:
    srv = ThreadServer(make_settings(**request.param))
    srv.__enter__()
    request.addfinalizer(lambda: srv.__exit__(None, None, None))
    return srv


@pytest.mark.parametrize("stream_server", [{"STREAM_TTL_SECONDS": 0.4}], indirect=True)
def test_idle_streams_expire(stream_server: ThreadServer) -> None:
    with stream_server.client() as c:
        create(c, stateful_spec())
        assert _step(c, {"stream": "a", "x": [1.0, 0.0]}).json()["t"] == 0
        assert _step(c, {"stream": "a", "x": [1.0, 0.0]}).json()["t"] == 1
        time.sleep(0.6)
        assert c.get("/v1/models/s/streams/a").status_code == 404
        assert _step(c, {"stream": "b", "x": [1.0, 0.0]}).json()["t"] == 0  # sweeps a at log time
        assert _step(c, {"stream": "a", "x": [1.0, 0.0]}).json()["t"] == 0  # afresh
        assert c.get("/v1/models/s/metrics").json()["streams"]["expired"] == 1


@pytest.mark.parametrize("stream_server", [{"MAX_STREAMS": 2}], indirect=True)
def test_a_flood_of_streams_evicts_the_idlest(stream_server: ThreadServer) -> None:
    with stream_server.client() as c:
        create(c, stateful_spec())
        for name in ["a", "b", "a", "c"]:  # b is the idlest when c arrives
            assert _step(c, {"stream": name, "x": [0.5, 0.5]}).status_code == 200
        live = [s["stream"] for s in c.get("/v1/models/s/streams").json()["streams"]]
        assert live == ["a", "c"]
        steps = [{"stream": f"flood-{i}", "x": [0.0, 1.0]} for i in range(50)]
        assert c.post("/v1/models/s/streams/batch", json={"steps": steps}).status_code == 200
        figures = c.get("/v1/models/s/metrics").json()["streams"]
        assert figures["live"] == 2 and figures["evicted"] == 1 + 50


@pytest.mark.timeout(180)
def test_streams_continue_bit_for_bit_after_kill_9(redis_url: str, prefix: str, tmp_path: Path) -> None:
    env = _service_env(redis_url, prefix, ONLINENORM_SNAPSHOT_EVERY_STEPS="5")
    spec = stateful_spec()
    sent = events(40, ["x1", "x2", "x3"], seed=3)
    ref = Reference(spec)
    srv = ProcessServer(env, tmp_path / "service.log").start()
    try:
        with srv.client() as c:
            create(c, spec)
            for e in sent[:25]:
                assert _step(c, e).json() == ref.step(e)
    finally:
        srv.kill()
    srv = ProcessServer(env, tmp_path / "service.log").start()
    try:
        with srv.client() as c:
            r = c.post("/v1/models/s/streams/batch", json={"steps": sent[25:]})
            assert r.status_code == 200, r.text
            got = r.json()["results"]
            expected = [ref.step(e) for e in sent[25:]]
            assert got == expected  # the hidden states, windows and ON statistics survived exactly
            assert all(math.isfinite(g.get("loss", 0.0)) for g in got)
    finally:
        srv.stop()


@pytest.mark.timeout(180)
def test_streams_through_any_replica(redis_url: str, prefix: str, tmp_path: Path) -> None:
    spec = stateful_spec()
    ref = Reference(spec)
    sent = events(16, ["r1", "r2"], seed=5)
    with Replicas(redis_url, prefix, tmp_path, 2) as replicas:
        a, b = (httpx.Client(base_url=u, timeout=30) for u in replicas.urls())
        with a, b:
            create(a, spec)
            replicas.wait_owned(["s"])
            for i, e in enumerate(sent):
                r = _step(a if i % 2 else b, e)
                assert r.status_code == 200, r.text
                assert r.json() == ref.step(e)
            for via in (a, b):
                wait_for(
                    lambda via=via: via.get("/v1/models/s/streams/r1").json().get("t") == ref.states["r1"].t,
                    10,
                    "the follower copy to catch up",
                )
