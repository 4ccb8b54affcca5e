"""Resource limits that follow a model: a stateful rnn's streams (and its steps that
wait for late labels) count against the budget at create, and a model recovered under
lower limits is refused by name instead of being built (registry.check_budget in _build)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from service.config import Settings
from tests.service.conftest import create, samples, spec
from tests.service.servers import ThreadServer

pytestmark = pytest.mark.cluster  # also against a real Redis Cluster


def test_the_streams_of_a_stateful_rnn_count_against_the_budget(
    make_settings: Callable[..., Settings],
) -> None:
    big = {
        "name": "big",
        "task": "regression",
        "input_shape": [512],
        "network": {"kind": "rnn", "stateful": True, "hidden": [512], "bptt": 256},
    }
    with ThreadServer(make_settings()) as srv, srv.client() as c:
        r = c.post("/v1/models", json=big)
        assert r.status_code == 422 and "streams" in r.json()["detail"], r.text
    with ThreadServer(make_settings(MAX_STREAMS=10)) as srv, srv.client() as c:
        r = c.post("/v1/models", json=big)  # ten streams, but 10,000 steps that may wait for labels
        assert r.status_code == 422 and "waiting for labels" in r.json()["detail"], r.text
    with ThreadServer(make_settings(MAX_STREAMS=10, MAX_PENDING_STREAM_LABELS=10)) as srv, srv.client() as c:
        assert c.post("/v1/models", json=big).status_code == 201  # twenty windows fit


def test_a_model_recovered_under_a_lower_limit_is_refused_by_name(
    make_settings: Callable[..., Settings],
) -> None:
    wide = spec("wide", network={"kind": "mlp", "hidden": [512, 512]})
    with ThreadServer(make_settings()) as srv, srv.client() as c:
        create(c, wide)
        create(c, spec("small"))
        assert c.post("/v1/models/wide/learn", json=samples(1)[0]).status_code == 200
    with ThreadServer(make_settings(MAX_MODEL_BYTES=1_000_000)) as srv, srv.client() as c:
        info = c.get("/v1/models/wide").json()
        assert info["status"] == "unrecoverable" and "ONLINENORM_MAX_MODEL_BYTES" in info["error"]
        r = c.post("/v1/models/wide/learn", json=samples(1)[0])
        assert r.status_code == 409 and "too big" in r.json()["detail"]
        assert c.post("/v1/models/small/learn", json=samples(1)[0]).status_code == 200
        assert c.delete("/v1/models/wide").status_code == 204
