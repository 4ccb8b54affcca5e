"""Stats, metrics, health, Prometheus and the OpenAPI docs (routes/stats.py,
routes/health.py, store/stats.py, telemetry.py, api/schemas.py)."""

from __future__ import annotations

import asyncio
import math

import httpx
import pytest
import redis
import redis.asyncio as aredis

from model.learner import OnlineLearner
from service.store import keys
from service.store.stats import read_layer
from tests.service.conftest import create, regression_spec, samples, spec
from tests.service.servers import ThreadServer, wait_for

pytestmark = pytest.mark.cluster  # also against a real Redis Cluster

LAYER_FIELDS = {
    "name", "num_features", "alpha_fwd", "alpha_bkw", "eps", "ecm", "samples_tracked",
    "mu", "var", "u", "v", "summary", "ls_rms", "clamped_fraction",
}  # fmt: skip


def test_stats_report_every_on_layer(client: httpx.Client) -> None:
    body = spec(norm={"kind": "online", "alpha_fwd": 0.99, "alpha_bkw": 0.9})
    create(client, body)
    batch = samples(12)
    client.post("/v1/models/m/learn/batch", json={"samples": batch})
    ref = OnlineLearner(body)
    ref.learn_many([s["x"] for s in batch], [s["y"] for s in batch])
    stats = client.get("/v1/models/m/stats").json()
    assert stats["step"] == 12
    assert [layer["name"] for layer in stats["layers"]] == ref.layer_names()
    assert stats["layers"] == ref.norm_stats()
    for layer in stats["layers"]:
        assert set(layer) == LAYER_FIELDS
        assert (
            len(layer["mu"])
            == len(layer["var"])
            == len(layer["u"])
            == len(layer["v"])
            == layer["num_features"]
        )
    hidden = stats["layers"][-1]
    assert (hidden["alpha_fwd"], hidden["alpha_bkw"]) == (0.99, 0.9)
    assert hidden["ls_rms"] is not None and math.isfinite(hidden["ls_rms"])


def test_stats_for_one_layer_and_unknown_layer(client: httpx.Client) -> None:
    info = create(client, spec())
    name = info["layers"][1]
    one = client.get("/v1/models/m/stats", params={"layer": name}).json()
    assert [layer["name"] for layer in one["layers"]] == [name]
    r = client.get("/v1/models/m/stats", params={"layer": "no.such.layer"})
    assert r.status_code == 404
    assert "no.such.layer" in r.json()["detail"]


def test_stats_of_a_model_without_normalization(client: httpx.Client) -> None:
    create(client, spec(norm={"kind": "none"}, network={"kind": "mlp", "hidden": [8], "input_norm": "none"}))
    assert client.get("/v1/models/m/stats").json() == {"step": 0, "layers": []}


def test_metrics_are_prequential_with_latency(client: httpx.Client) -> None:
    create(client, spec())
    create(client, regression_spec())
    empty = client.get("/v1/models/m/metrics").json()
    assert empty["samples_seen"] == 0 and empty["loss"] is None
    results = [client.post("/v1/models/m/learn", json=s).json() for s in samples(9)]
    client.post("/v1/models/m/predict", json={"x": [1, 2, 3, 4]})
    m = client.get("/v1/models/m/metrics").json()
    assert m["samples_seen"] == m["step"] == 9
    assert math.isclose(m["loss"], sum(r["loss"] for r in results) / 9, rel_tol=1e-9)
    correct = sum(r["prediction"] == s["y"] for r, s in zip(results, samples(9), strict=True))
    assert math.isclose(m["accuracy"], correct / 9, rel_tol=1e-9)
    assert {"loss_ewm", "accuracy_ewm"} <= set(m)
    assert m["latency"]["learn"]["count"] == 9 and m["latency"]["predict"]["count"] == 1
    assert (
        m["latency"]["learn"]["p50_ms"] > 0
        and m["latency"]["learn"]["p99_ms"] >= m["latency"]["learn"]["p50_ms"]
    )
    client.post("/v1/models/r/learn", json={"x": [1, 2, 3], "y": 2.0})
    r = client.get("/v1/models/r/metrics").json()
    assert {"mae", "mae_ewm"} <= set(r) and "accuracy" not in r


def test_stats_are_published_to_redis(make_settings, rds: redis.Redis, prefix: str, backend: str) -> None:
    with ThreadServer(make_settings(STATS_EVERY_STEPS=5, STATS_HISTORY=10)) as srv, srv.client() as c:
        info = create(c, spec())
        for s in samples(60):
            assert c.post("/v1/models/m/learn", json=s).status_code == 200
        wait_for(lambda: rds.xlen(keys.stats_key(prefix, "m")) >= 1, 10, "a stats entry")
        live = c.get("/v1/models/m/stats").json()
    # The last publish happened at step 60 (a multiple of 5), and shutdown changes nothing.
    last = rds.xrevrange(keys.stats_key(prefix, "m"), count=1)[0][1]
    assert int(last[b"step"]) == 60
    assert rds.xlen(keys.stats_key(prefix, "m")) <= 10 + 100  # MAXLEN ~ 10: capped, approximately

    async def read_all() -> list:
        cls = aredis.RedisCluster if backend == "cluster" else aredis.Redis
        client = cls.from_url(srv.app.state.settings.REDIS_URL)
        try:
            return [await read_layer(client, prefix, "m", layer) for layer in info["layers"]]
        finally:
            await client.aclose()

    published = asyncio.run(read_all())
    for layer, pub in zip(live["layers"], published, strict=True):
        assert pub is not None and pub["step"] == 60
        for field in ("mu", "var", "u", "v", "summary", "alpha_fwd", "alpha_bkw", "num_features"):
            assert pub[field] == layer[field], field


def test_stats_are_published_by_time_when_idle(make_settings, rds: redis.Redis, prefix: str) -> None:
    with ThreadServer(make_settings(STATS_EVERY_SECONDS=0.2)) as srv, srv.client() as c:
        create(c, spec())
        c.post("/v1/models/m/learn/batch", json={"samples": samples(3)})
        wait_for(
            lambda: rds.hget(keys.norm_key(prefix, "m", "input_norm"), "step") == b"3", 10, "timed publish"
        )


def test_health_readiness_and_prometheus(client: httpx.Client) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["redis"] == "up"
    create(client, spec())
    client.post("/v1/models/m/learn", json=samples(1)[0])
    client.get("/v1/models/does-not-exist")
    client.get("/not/a/route")
    text = client.get("/metrics")
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    body = text.text
    assert (
        'onlinenorm_http_requests_total{method="POST",route="/v1/models/{name}/learn",status="200"} 1.0'
        in body
    )
    assert 'route="/v1/models/{name}",status="404"' in body
    assert 'route="unmatched"' in body
    assert "does-not-exist" not in body  # labels never carry model names or raw paths
    assert "onlinenorm_samples_learned_total 1.0" in body
    assert "onlinenorm_models 1.0" in body
    assert "onlinenorm_redis_up 1.0" in body


def test_openapi_documents_every_body_with_examples(client: httpx.Client) -> None:
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    bodies = 0
    for path, item in schema["paths"].items():
        for method, op in item.items():
            assert op["responses"], (method, path)
            if method == "post":
                content = op["requestBody"]["content"]["application/json"]
                assert content.get("examples"), (method, path)
                bodies += 1
    assert bodies == 8  # create, learn, learn/batch, predict, predict/batch, labels, streams step/batch
    learn = schema["paths"]["/v1/models/{name}/learn"]["post"]
    assert any(p["name"] == "Idempotency-Key" for p in learn["parameters"])
