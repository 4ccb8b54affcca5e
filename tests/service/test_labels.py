"""Delayed labels (routes/predict.py's label_later, routes/labels.py, store/pending.py):
a prediction is kept with what was served; its label learns from the stored input, one
step per label in arrival order, scored against the served prediction; ids are unique;
unknown, expired and evicted ids are 404, a second label 409; and everything goes
through the log, so it survives a kill -9 and works through any replica."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from model.learner import OnlineLearner
from service.config import Settings
from service.store import keys
from tests.service.conftest import PROBES, create, regression_spec, samples, spec
from tests.service.reference import probe_predictions
from tests.service.replicas import Replicas
from tests.service.servers import ProcessServer, ThreadServer
from tests.service.test_ordering import _service_env

pytestmark = pytest.mark.cluster  # also against a real Redis Cluster


def _predict_later(c: httpx.Client, x: list[float], **extra: Any) -> dict[str, Any]:
    r = c.post("/v1/models/m/predict", json={"x": x, "label_later": True, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def _metrics(c: httpx.Client) -> dict[str, Any]:
    r = c.get("/v1/models/m/metrics")
    assert r.status_code == 200, r.text
    return r.json()


def test_a_label_learns_from_the_stored_input_and_scores_the_served_prediction(
    client: httpx.Client,
) -> None:
    body = spec()
    create(client, body)
    ref = OnlineLearner(body)
    sent = samples(12)
    # Predict all first (the model does not move), then label in another order.
    served = [_predict_later(client, s["x"]) for s in sent]
    assert len({p["prediction_id"] for p in served}) == len(sent)
    for p in served:
        assert p["step"] == 0 and set(p) == {"prediction", "probabilities", "step", "prediction_id"}
    order = [5, 0, 11, 3, 1, 2, 4, 6, 10, 9, 8, 7]
    for n, i in enumerate(order, start=1):
        r = client.post(
            "/v1/models/m/labels", json={"prediction_id": served[i]["prediction_id"], "y": sent[i]["y"]}
        )
        assert r.status_code == 200, r.text
        expected = ref.learn_one(sent[i]["x"], sent[i]["y"])
        assert r.json() == {"step": n, "loss": expected.loss, "prediction": served[i]["prediction"]}
    # The model equals a learner fed the same samples in label order.
    r = client.post("/v1/models/m/predict/batch", json={"samples": [{"x": x} for x in PROBES]})
    assert r.json() == probe_predictions(ref, PROBES)
    metrics = _metrics(client)
    correct = [served[i]["prediction"] == sent[i]["y"] for i in order]
    assert metrics["samples_seen"] == 12
    assert metrics["accuracy"] == pytest.approx(sum(correct) / 12)
    assert metrics["loss"] == pytest.approx(ref.metrics_dict()["loss"])
    assert metrics["pending_labels"] == 0 and metrics["labels_received"] == 12
    assert metrics["label_delay_seconds"]["count"] == 12
    assert metrics["label_delay_seconds"]["p99"] >= metrics["label_delay_seconds"]["p50"] >= 0
    prometheus = client.get("/metrics").text
    assert 'onlinenorm_labels_received_total{model="m"} 12.0' in prometheus
    assert 'onlinenorm_pending_labels{model="m"} 0.0' in prometheus
    assert 'onlinenorm_label_delay_seconds_count{model="m"} 12.0' in prometheus


def test_regression_labels_score_the_served_value(client: httpx.Client) -> None:
    body = regression_spec("m")
    create(client, body)
    xs = [[1.0, 2.0, 3.0], [0.5, -1.0, 4.0], [2.0, 2.0, -2.0]]
    ys = [1.5, -0.5, 3.0]
    served = [_predict_later(client, x) for x in xs]
    r = client.post(
        "/v1/models/m/labels",
        json={
            "labels": [{"prediction_id": p["prediction_id"], "y": y} for p, y in zip(served, ys, strict=True)]
        },
    )
    assert r.status_code == 200, r.text
    assert [res["prediction"] for res in r.json()["results"]] == [p["prediction"] for p in served]
    errors = [abs(p["prediction"] - y) for p, y in zip(served, ys, strict=True)]
    assert _metrics(client)["mae"] == pytest.approx(sum(errors) / 3, rel=1e-5)


def test_client_ids_are_unique_and_checked(client: httpx.Client) -> None:
    create(client, spec())
    x = samples(1)[0]["x"]
    mine = client.post("/v1/models/m/predict", json={"x": x, "prediction_id": "order-118"})
    assert mine.status_code == 200 and mine.json()["prediction_id"] == "order-118"  # implies label_later
    again = client.post("/v1/models/m/predict", json={"x": x, "prediction_id": "order-118"})
    assert again.status_code == 409 and "order-118" in again.json()["detail"]
    for bad in ["", "a b", "x" * 129, "é", 17]:
        r = client.post("/v1/models/m/predict", json={"x": x, "prediction_id": bad})
        assert r.status_code == 422 and "prediction_id" in r.json()["detail"], bad
    r = client.post("/v1/models/m/predict", json={"x": x, "label_later": "yes"})
    assert r.status_code == 422 and "label_later" in r.json()["detail"]
    # A batch that reuses an id keeps none of its predictions.
    batch = {"samples": [{"x": x, "prediction_id": "fresh"}, {"x": x, "prediction_id": "order-118"}]}
    assert client.post("/v1/models/m/predict/batch", json=batch).status_code == 409
    twice = {"samples": [{"x": x, "prediction_id": "dup"}, {"x": x, "prediction_id": "dup"}]}
    assert client.post("/v1/models/m/predict/batch", json=twice).status_code == 409
    assert client.post("/v1/models/m/labels", json={"prediction_id": "fresh", "y": 0}).status_code == 404
    assert client.post("/v1/models/m/labels", json={"prediction_id": "dup", "y": 0}).status_code == 404
    # Labelled ids stay taken.
    assert client.post("/v1/models/m/labels", json={"prediction_id": "order-118", "y": 1}).status_code == 200
    assert client.post("/v1/models/m/predict", json={"x": x, "prediction_id": "order-118"}).status_code == 409
    # Plain predictions keep no state and answer no id.
    plain = client.post("/v1/models/m/predict", json={"x": x}).json()
    assert "prediction_id" not in plain
    assert _metrics(client)["pending_labels"] == 0


def test_label_errors_change_nothing(client: httpx.Client, rds: redis.Redis, prefix: str) -> None:
    create(client, spec())
    s = samples(3)
    pids = [_predict_later(client, t["x"])["prediction_id"] for t in s]

    def status(body: dict[str, Any]) -> tuple[int, str]:
        r = client.post("/v1/models/m/labels", json=body)
        return r.status_code, r.json().get("detail", "")

    assert status({"prediction_id": "never-made", "y": 0})[0] == 404
    code, detail = status({"prediction_id": pids[0], "y": 3})
    assert code == 422 and "y" in detail
    assert status({"prediction_id": pids[0]})[0] == 422
    assert status({"prediction_id": pids[0], "y": 0, "x": [1]})[0] == 422
    assert status({"labels": []})[0] == 422
    # A batch with one bad label applies none of them.
    code, detail = status({"labels": [{"prediction_id": pids[0], "y": 0}, {"prediction_id": "gone", "y": 0}]})
    assert code == 404 and "labels[1]" in detail
    code, detail = status(
        {"labels": [{"prediction_id": pids[0], "y": 0}, {"prediction_id": pids[0], "y": 1}]}
    )
    assert code == 409 and "twice" in detail
    assert client.get("/v1/models/m").json()["step"] == 0
    assert rds.xlen(keys.log_key(prefix, "m")) == 0  # nothing was logged
    # ... and the predictions are still waiting: labelled now, and then only once.
    r = client.post(
        "/v1/models/m/labels",
        json={"labels": [{"prediction_id": p, "y": t["y"]} for p, t in zip(pids, s, strict=True)]},
    )
    assert r.status_code == 200 and r.json()["step"] == 3
    code, detail = status({"prediction_id": pids[1], "y": 0})
    assert code == 409 and pids[1] in detail
    assert client.get("/v1/models/m").json()["step"] == 3


def test_idempotency_key_replays_a_label(client: httpx.Client) -> None:
    create(client, spec())
    s = samples(2)
    pids = [_predict_later(client, t["x"])["prediction_id"] for t in s]
    body = {"labels": [{"prediction_id": p, "y": t["y"]} for p, t in zip(pids, s, strict=True)]}
    first = client.post("/v1/models/m/labels", json=body, headers={"Idempotency-Key": "lab-1"})
    assert first.status_code == 200
    retry = client.post("/v1/models/m/labels", json=body, headers={"Idempotency-Key": "lab-1"})
    assert retry.status_code == 200 and retry.json() == first.json()
    assert retry.headers["idempotent-replayed"] == "true"
    other_key = client.post("/v1/models/m/labels", json=body, headers={"Idempotency-Key": "lab-2"})
    assert other_key.status_code == 409
    assert client.get("/v1/models/m").json()["step"] == 2


@pytest.fixture
def labels_server(make_settings: Callable[..., Settings], request: pytest.FixtureRequest) -> ThreadServer:
    overrides = getattr(request, "param", {})
    srv = ThreadServer(make_settings(**overrides))
    srv.__enter__()
    request.addfinalizer(lambda: srv.__exit__(None, None, None))
    return srv


@pytest.mark.parametrize("labels_server", [{"LABEL_TTL_SECONDS": 0.5}], indirect=True)
def test_predictions_expire(labels_server: ThreadServer) -> None:
    with labels_server.client() as c:
        create(c, spec())
        s = samples(3)
        pids = [_predict_later(c, t["x"])["prediction_id"] for t in s]
        assert _metrics(c)["pending_labels"] == 3
        time.sleep(0.7)
        r = c.post("/v1/models/m/labels", json={"prediction_id": pids[0], "y": s[0]["y"]})
        assert r.status_code == 404 and "expired" in r.json()["detail"]
        metrics = _metrics(c)
        assert metrics["pending_labels"] == 0 and metrics["labels_expired"] == 3
        fresh = _predict_later(c, s[1]["x"])  # pruning the old ones on the way
        assert (
            c.post("/v1/models/m/labels", json={"prediction_id": fresh["prediction_id"], "y": 0}).status_code
            == 200
        )
        assert _metrics(c)["labels_expired"] == 3


@pytest.mark.parametrize("labels_server", [{"MAX_PENDING_LABELS": 3}], indirect=True)
def test_the_bound_evicts_the_oldest(labels_server: ThreadServer) -> None:
    with labels_server.client() as c:
        create(c, spec())
        s = samples(5)
        pids = [_predict_later(c, t["x"])["prediction_id"] for t in s]
        metrics = _metrics(c)
        assert metrics["pending_labels"] == 3 and metrics["labels_evicted"] == 2
        for pid in pids[:2]:
            assert c.post("/v1/models/m/labels", json={"prediction_id": pid, "y": 0}).status_code == 404
        for pid, t in zip(pids[2:], s[2:], strict=True):
            assert c.post("/v1/models/m/labels", json={"prediction_id": pid, "y": t["y"]}).status_code == 200


def test_deleting_the_model_deletes_its_pending_predictions(
    client: httpx.Client, rds: redis.Redis, prefix: str
) -> None:
    create(client, spec())
    pid = _predict_later(client, samples(1)[0]["x"])["prediction_id"]
    assert rds.zcard(keys.pending_at_key(prefix, "m")) == 1
    assert client.delete("/v1/models/m").status_code == 204
    for key in keys.label_keys(prefix, "m"):
        assert not rds.exists(key), key
    create(client, spec())
    assert client.post("/v1/models/m/labels", json={"prediction_id": pid, "y": 0}).status_code == 404


@pytest.mark.timeout(180)
def test_pending_predictions_and_labels_survive_kill_9(redis_url: str, prefix: str, tmp_path: Path) -> None:
    env = _service_env(redis_url, prefix, ONLINENORM_SNAPSHOT_EVERY_STEPS="4")
    body = spec()
    sent = samples(10)
    srv = ProcessServer(env, tmp_path / "service.log").start()
    try:
        with srv.client() as c:
            create(c, body)
            served = [_predict_later(c, s["x"]) for s in sent]
            for p, s in zip(served[:7], sent[:7], strict=True):
                assert (
                    c.post(
                        "/v1/models/m/labels", json={"prediction_id": p["prediction_id"], "y": s["y"]}
                    ).status_code
                    == 200
                )
    finally:
        srv.kill()
    srv = ProcessServer(env, tmp_path / "service.log").start()
    try:
        with srv.client() as c:
            assert c.get("/v1/models/m").json()["step"] == 7
            assert (
                c.post(
                    "/v1/models/m/labels", json={"prediction_id": served[0]["prediction_id"], "y": 0}
                ).status_code
                == 409
            )
            r = c.post(
                "/v1/models/m/labels",
                json={
                    "labels": [
                        {"prediction_id": p["prediction_id"], "y": s["y"]}
                        for p, s in zip(served[7:], sent[7:], strict=True)
                    ]
                },
            )
            assert r.status_code == 200 and r.json()["step"] == 10
            ref = OnlineLearner(body)
            ref.learn_many([s["x"] for s in sent], [s["y"] for s in sent])
            probes = c.post("/v1/models/m/predict/batch", json={"samples": [{"x": x} for x in PROBES]}).json()
            assert probes == probe_predictions(ref, PROBES)
            correct = sum(p["prediction"] == s["y"] for p, s in zip(served, sent, strict=True))
            assert _metrics(c)["accuracy"] == pytest.approx(correct / 10)
    finally:
        srv.stop()


@pytest.mark.timeout(180)
def test_predict_on_one_replica_label_on_another(redis_url: str, prefix: str, tmp_path: Path) -> None:
    body = spec()
    sent = samples(6)
    with Replicas(redis_url, prefix, tmp_path, 2) as replicas:
        a, b = (httpx.Client(base_url=u, timeout=30) for u in replicas.urls())
        with a, b:
            create(a, body)
            replicas.wait_owned(["m"])
            served = []
            for i, s in enumerate(sent):
                via = a if i % 2 else b
                r = via.post("/v1/models/m/predict", json={"x": s["x"], "label_later": True})
                assert r.status_code == 200, r.text
                served.append(r.json())
            ref = OnlineLearner(body)
            for i, (p, s) in enumerate(zip(served, sent, strict=True)):
                via = b if i % 2 else a
                r = via.post("/v1/models/m/labels", json={"prediction_id": p["prediction_id"], "y": s["y"]})
                assert r.status_code == 200, r.text
                assert r.json()["loss"] == ref.learn_one(s["x"], s["y"]).loss
                assert r.json()["prediction"] == p["prediction"]
            again = a.post("/v1/models/m/labels", json={"prediction_id": served[1]["prediction_id"], "y": 0})
            assert again.status_code == 409
