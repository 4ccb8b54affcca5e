"""GET /v1/models/{name}/stats/history (routes/history.py, store/stats_history.py):
per published step, the layer summaries and prequential metrics, from the capped stats
stream in real Redis."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import redis

from model.learner import OnlineLearner
from service.config import Settings
from service.store import keys
from tests.service.conftest import create, regression_spec, samples, spec
from tests.service.servers import ThreadServer, wait_for

pytestmark = pytest.mark.cluster  # also against a real Redis Cluster

EVERY = 5
LS_SPEC = spec(network={"kind": "mlp", "hidden": [8, 6]}, norm={"kind": "online", "ecm": "ls"})


@pytest.fixture
def publishing(make_settings: Callable[..., Settings]) -> Iterator[httpx.Client]:
    """A server that publishes stats every EVERY steps."""
    with ThreadServer(make_settings(STATS_EVERY_STEPS=EVERY)) as srv, srv.client() as c:
        yield c


def learn_one_by_one(client: httpx.Client, batch: list[dict[str, Any]], name: str = "m") -> None:
    for s in batch:
        r = client.post(f"/v1/models/{name}/learn", json=s)
        assert r.status_code == 200, r.text


def wait_published(client: httpx.Client, step: int, name: str = "m") -> list[dict[str, Any]]:
    """The history once ``step`` is in it (a publish follows the answer of its learn)."""

    def published() -> list[dict[str, Any]] | None:
        entries = client.get(f"/v1/models/{name}/stats/history").json()["entries"]
        return entries if entries and entries[-1]["step"] == step else None

    return wait_for(published, 10, f"the publish of step {step}")


def assert_close(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Same keys; numbers equal to float64 rounding, everything else exactly."""
    assert set(got) == set(want)
    for key, value in want.items():
        if isinstance(value, float) and got[key] is not None:
            assert math.isclose(got[key], value, rel_tol=1e-9, abs_tol=1e-12), (key, got[key], value)
        else:
            assert got[key] == value, key


def expected_points(body: dict[str, Any], batch: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """What each published step must hold, from a reference learner fed the same samples."""
    ref = OnlineLearner(body)
    out = {}
    for s in batch:
        ref.learn_one(s["x"], s["y"])
        if ref.step % EVERY:
            continue
        layers = []
        for layer in ref.norm_stats():
            std = np.sqrt(np.asarray(layer["var"]) + layer["eps"])
            layers.append(
                {
                    "name": layer["name"],
                    "samples_tracked": layer["samples_tracked"],
                    **layer["summary"],
                    "mu_spread": float(np.std(layer["mu"])),
                    "std_spread": float(np.std(std)),
                    "u_spread": float(np.std(layer["u"])),
                    "v_spread": float(np.std(layer["v"])),
                    "ls_rms": layer["ls_rms"],
                    "clamped_fraction": layer["clamped_fraction"],
                }
            )
        out[ref.step] = {"metrics": ref.metrics_dict(), "layers": layers}
    return out


def test_history_holds_summaries_and_metrics_of_every_published_step(publishing: httpx.Client) -> None:
    info = create(publishing, LS_SPEC)
    batch = samples(4 * EVERY + 3)
    learn_one_by_one(publishing, batch)
    entries = publishing.get("/v1/models/m/stats/history").json()["entries"]
    assert [e["step"] for e in entries] == [5, 10, 15, 20]  # oldest first; step 23 not yet due
    expected = expected_points(LS_SPEC, batch)
    for entry in entries:
        assert [layer["name"] for layer in entry["layers"]] == info["layers"]
        want = expected[entry["step"]]
        assert set(entry["metrics"]) == {"samples_seen", "loss", "loss_ewm", "accuracy", "accuracy_ewm"}
        assert_close(entry["metrics"], want["metrics"])
        for got, layer in zip(entry["layers"], want["layers"], strict=True):
            assert_close(got, layer)
        assert entry["layers"][-1]["ls_rms"] is not None  # ecm "ls" hidden layers
    ids = [e["id"] for e in entries]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    times = [e["time"] for e in entries]
    assert times == sorted(times)


def test_history_of_a_regression_model_without_normalization(publishing: httpx.Client) -> None:
    """No ON layer: the history still carries the prequential metrics (MAE, not accuracy)."""
    create(publishing, regression_spec(norm={"kind": "none"}, network={"hidden": [8], "input_norm": "none"}))
    for i in range(EVERY):
        publishing.post("/v1/models/r/learn", json={"x": [1.0, i, 2.0], "y": 0.5 * i})
    (entry,) = wait_published(publishing, EVERY, "r")
    assert entry["step"] == EVERY and entry["layers"] == []
    assert entry["metrics"]["samples_seen"] == EVERY
    assert {"mae", "mae_ewm"} <= set(entry["metrics"]) and "accuracy" not in entry["metrics"]


def test_layer_filter_since_and_limit(publishing: httpx.Client) -> None:
    info = create(publishing, LS_SPEC)
    learn_one_by_one(publishing, samples(6 * EVERY))
    everything = wait_published(publishing, 30)
    steps = [e["step"] for e in everything]
    assert steps == [5, 10, 15, 20, 25, 30]
    ids = [e["id"] for e in everything]

    def history(**params: Any) -> list[dict[str, Any]]:
        r = publishing.get("/v1/models/m/stats/history", params=params)
        assert r.status_code == 200, r.text
        return r.json()["entries"]

    layer = info["layers"][1]
    one = history(layer=layer)
    assert all([x["name"] for x in e["layers"]] == [layer] for e in one)
    assert [e["layers"][0] for e in one] == [e["layers"][1] for e in everything]
    assert [e["id"] for e in history(since=ids[2])] == ids[3:]  # an entry id: exclusive
    assert [e["id"] for e in history(since=ids[2], limit=2)] == ids[3:5]
    assert [e["step"] for e in history(since="15")] == [20, 25, 30]  # a step: larger steps only
    assert [e["step"] for e in history(since="14")] == [15, 20, 25, 30]
    assert [e["step"] for e in history(since="0", limit=2)] == [5, 10]  # the oldest after it
    assert [e["step"] for e in history(limit=2)] == [25, 30]  # no since: the newest, oldest first
    assert history(since=ids[-1]) == [] and history(since="30") == []
    assert [e["id"] for e in history(since="0-0")] == ids


def test_since_as_a_step_scans_a_long_stream(make_settings: Callable[..., Settings]) -> None:
    """More entries than one scan chunk (200): since=<step> still finds its place."""
    with ThreadServer(make_settings(STATS_EVERY_STEPS=1)) as srv, srv.client() as c:
        create(c, spec(norm={"kind": "none"}, network={"kind": "mlp", "hidden": [4], "input_norm": "none"}))
        learn_one_by_one(c, samples(230))  # one publish per request
        wait_published(c, 230)
        entries = c.get("/v1/models/m/stats/history", params={"since": "3"}).json()["entries"]
        assert [e["step"] for e in entries] == list(range(4, 231))


def test_history_errors(publishing: httpx.Client) -> None:
    create(publishing, spec())
    assert publishing.get("/v1/models/nope/stats/history").status_code == 404
    r = publishing.get("/v1/models/m/stats/history", params={"layer": "no.such.layer"})
    assert r.status_code == 404 and "no.such.layer" in r.json()["detail"]
    for bad in ("abc", "-1", "1-2-3", "1.5", "12-", " 3", "\u00b2", "\u0661-\u0660", "9" * 19, f"{2**64}-0"):
        r = publishing.get("/v1/models/m/stats/history", params={"since": bad})
        assert r.status_code == 422, bad
        assert "since" in r.json()["detail"]
    for limit in ("0", "10001", "ten"):
        assert publishing.get("/v1/models/m/stats/history", params={"limit": limit}).status_code == 422
    assert publishing.get("/v1/models/m/stats/history").json() == {"entries": []}


def test_history_reads_entries_of_the_older_nested_format(
    publishing: httpx.Client, rds: redis.Redis, prefix: str
) -> None:
    """Entries published before the summaries were flattened still read (spreads null)."""
    create(publishing, spec())
    summary = {"mu_mean": 1.0, "mu_min": 0.5, "mu_max": 1.5, "std_mean": 2.0, "std_min": 1.0}
    summary |= {"std_max": 3.0, "u_mean": 0.0, "u_abs_max": 0.1, "v_mean": 0.0, "v_abs_max": 0.2}
    old = [{"name": "input_norm", "samples_tracked": 7, "summary": summary, "ls_rms": None}]
    rds.xadd(keys.stats_key(prefix, "m"), {"step": 7, "t": 1.5, "layers": orjson.dumps(old)})
    (entry,) = publishing.get("/v1/models/m/stats/history").json()["entries"]
    assert entry["step"] == 7 and entry["time"] == 1.5 and entry["metrics"] is None
    (layer,) = entry["layers"]
    assert layer["mu_max"] == 1.5 and layer["v_abs_max"] == 0.2 and layer["samples_tracked"] == 7
    assert layer["mu_spread"] is None and layer["clamped_fraction"] is None
