"""Learn and predict (routes/learn.py, routes/predict.py, writer.py): the answers equal
an in-process OnlineLearner fed the same samples, bit for bit."""

from __future__ import annotations

import httpx
import pytest

from model.learner import OnlineLearner
from tests.service.conftest import PROBES, create, regression_spec, samples, spec
from tests.service.reference import model_state

pytestmark = pytest.mark.cluster  # also against a real Redis Cluster


def _reference(body: dict) -> OnlineLearner:
    return OnlineLearner(body)


def test_learn_is_prequential_and_matches_a_reference_learner(client: httpx.Client) -> None:
    body = spec()
    create(client, body)
    ref = _reference(body)
    for i, s in enumerate(samples(20)):
        r = client.post("/v1/models/m/learn", json=s)
        assert r.status_code == 200, r.text
        expected = ref.learn_one(s["x"], s["y"])
        assert r.json() == {"step": i + 1, "loss": expected.loss, "prediction": expected.prediction}
        assert isinstance(r.json()["prediction"], int)


def test_learn_batch_is_one_step_per_sample_in_order(client: httpx.Client) -> None:
    body = spec()
    create(client, body)
    ref = _reference(body)
    batch = samples(7)
    r = client.post("/v1/models/m/learn/batch", json={"samples": batch})
    assert r.status_code == 200, r.text
    expected = ref.learn_many([s["x"] for s in batch], [s["y"] for s in batch])
    out = r.json()
    assert out["step"] == 7
    assert out["results"] == [{"step": e.step, "loss": e.loss, "prediction": e.prediction} for e in expected]
    # A batch is the same as the samples one by one.
    create(client, spec("single"))
    singles = [client.post("/v1/models/single/learn", json=s).json() for s in batch]
    assert singles == out["results"]


def test_predict_classification_gives_class_and_probabilities(client: httpx.Client) -> None:
    body = spec()
    create(client, body)
    client.post("/v1/models/m/learn/batch", json={"samples": samples(10)})
    ref = _reference(body)
    ref.learn_many([s["x"] for s in samples(10)], [s["y"] for s in samples(10)])
    r = client.post("/v1/models/m/predict", json={"x": PROBES[0]})
    assert r.status_code == 200
    expected = ref.predict_one(PROBES[0])
    assert r.json() == {
        "prediction": expected.prediction,
        "probabilities": expected.probabilities,
        "step": 10,
    }
    assert abs(sum(r.json()["probabilities"]) - 1) < 1e-5
    r = client.post("/v1/models/m/predict/batch", json={"samples": [{"x": x} for x in PROBES]})
    assert r.status_code == 200
    assert r.json() == {
        "step": 10,
        "predictions": [
            {"prediction": p.prediction, "probabilities": p.probabilities} for p in ref.predict_many(PROBES)
        ],
    }


def test_predict_changes_nothing(client: httpx.Client) -> None:
    create(client, spec())
    client.post("/v1/models/m/learn/batch", json={"samples": samples(5)})
    before = model_state(client, ecm_diagnostics=False)
    first = client.post("/v1/models/m/predict", json={"x": PROBES[1]}).json()
    for _ in range(3):
        assert client.post("/v1/models/m/predict", json={"x": PROBES[1]}).json() == first
    client.post("/v1/models/m/predict/batch", json={"samples": [{"x": x} for x in PROBES]})
    assert model_state(client, ecm_diagnostics=False) == before


def test_regression_scalar_and_vector_outputs(client: httpx.Client) -> None:
    create(client, regression_spec("r1"))
    create(client, regression_spec("r3", output_dim=3))
    ref1, ref3 = _reference(regression_spec("r1")), _reference(regression_spec("r3", output_dim=3))
    r = client.post("/v1/models/r1/learn", json={"x": [1.0, 2.0, 3.0], "y": 0.5})
    e = ref1.learn_one([1.0, 2.0, 3.0], 0.5)
    assert r.json() == {"step": 1, "loss": e.loss, "prediction": e.prediction}
    assert isinstance(r.json()["prediction"], float)
    r = client.post("/v1/models/r3/learn", json={"x": [1.0, 2.0, 3.0], "y": [0.5, 1.5, -2.0]})
    e = ref3.learn_one([1.0, 2.0, 3.0], [0.5, 1.5, -2.0])
    assert r.json() == {"step": 1, "loss": e.loss, "prediction": e.prediction}
    assert len(r.json()["prediction"]) == 3
    p = client.post("/v1/models/r1/predict", json={"x": [0.0, 1.0, 0.0]}).json()
    assert p == {"prediction": ref1.predict_one([0.0, 1.0, 0.0]).prediction, "step": 1}
    assert "probabilities" not in p


def test_nested_and_flat_inputs_are_the_same(client: httpx.Client) -> None:
    create(client, {"name": "img", "task": "classification", "input_shape": [2, 2], "num_classes": 2,
                    "network": {"kind": "mlp", "hidden": [4]}})  # fmt: skip
    nested = client.post("/v1/models/img/predict", json={"x": [[1, 2], [3, 4]]})
    flat = client.post("/v1/models/img/predict", json={"x": [1, 2, 3, 4]})
    assert nested.status_code == flat.status_code == 200
    assert nested.json() == flat.json()


def test_models_are_independent(client: httpx.Client) -> None:
    create(client, spec("a"))
    create(client, spec("b"))
    client.post("/v1/models/a/learn/batch", json={"samples": samples(6)})
    assert client.get("/v1/models/a").json()["step"] == 6
    assert client.get("/v1/models/b").json()["step"] == 0
