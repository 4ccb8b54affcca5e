"""A prediction is never null: an input whose output overflows is the client's 422
(routes/predict.py maps the learner's NonFinitePredictionError), and changes nothing."""

from __future__ import annotations

import httpx

from tests.service.conftest import create

HUGE = [3.4e38, 3.4e38, 3.4e38]


def test_an_input_that_overflows_the_output_is_422_not_null(client: httpx.Client) -> None:
    create(
        client,
        {
            "name": "raw",
            "task": "regression",
            "input_shape": [3],
            "network": {"input_norm": "none", "hidden": [64, 64], "skip": False},
            "norm": {"kind": "none"},
        },
    )
    for path, body in (
        ("predict", {"x": HUGE}),
        ("predict/batch", {"samples": [{"x": [1.0, 2.0, 3.0]}, {"x": HUGE}]}),
    ):
        r = client.post(f"/v1/models/raw/{path}", json=body)
        assert r.status_code == 422, r.text
        assert "not finite" in r.json()["detail"]
    ok = client.post("/v1/models/raw/predict", json={"x": [1.0, 2.0, 3.0]})
    assert ok.status_code == 200 and ok.json()["prediction"] is not None
