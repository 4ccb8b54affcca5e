"""Create, list, read and delete models (routes/models.py, registry.py, store/catalog.py)."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest
import redis

from service.store import keys
from tests.service.conftest import create, regression_spec, samples, spec
from tests.service.servers import ThreadServer, wait_for

pytestmark = pytest.mark.cluster  # also against a real Redis Cluster


def test_create_answers_the_model_with_defaults_filled(client: httpx.Client) -> None:
    body = create(client, spec("digits"))
    assert body["name"] == "digits"
    assert body["step"] == 0
    assert body["spec"]["name"] == "digits"
    assert body["spec"]["optimizer"]["kind"] in ("sgd", "adam")  # defaults are filled in
    assert body["layers"] and all(isinstance(n, str) for n in body["layers"])
    assert dt.datetime.fromisoformat(body["created_at"]).tzinfo is not None
    assert body["updated_at"] is None


def test_create_writes_the_key_schema(client: httpx.Client, rds: redis.Redis, prefix: str) -> None:
    create(client, spec("a"))
    incarnation = rds.hget(keys.catalog_key(prefix), "a")
    assert list(rds.hkeys(keys.catalog_key(prefix))) == [b"a"] and incarnation
    assert rds.hget(f"{prefix}:model:{{a}}:meta", "inc") == incarnation
    assert rds.type(f"{prefix}:model:{{a}}:spec") == b"string"
    assert rds.type(f"{prefix}:model:{{a}}:snapshot") == b"hash"
    assert rds.hget(f"{prefix}:model:{{a}}:snapshot", "step") == b"0"
    assert (
        rds.hget(f"{prefix}:model:{{a}}:lease", "replica")
        == client.get("/healthz").json()["replica"].encode()
    )


def test_list_and_read(client: httpx.Client) -> None:
    create(client, spec("b"))
    create(client, regression_spec("a"))
    listed = client.get("/v1/models").json()["models"]
    assert [m["name"] for m in listed] == ["a", "b"]
    one = client.get("/v1/models/a").json()
    assert one["spec"]["task"] == "regression" and one["step"] == 0


def test_read_reports_step_and_updated_at(client: httpx.Client) -> None:
    create(client, spec())
    for s in samples(3):
        assert client.post("/v1/models/m/learn", json=s).status_code == 200
    body = client.get("/v1/models/m").json()
    assert body["step"] == 3
    assert body["updated_at"] is not None
    assert body["updated_at"] >= body["created_at"]


def test_duplicate_name_is_409(client: httpx.Client) -> None:
    create(client, spec())
    r = client.post("/v1/models", json=spec(network={"kind": "mlp", "hidden": [4]}))
    assert r.status_code == 409
    assert "already exists" in r.json()["detail"]


def test_create_retried_after_a_lost_answer_is_not_a_conflict(client: httpx.Client) -> None:
    """The same spec again, before any learn: the retry of a create whose answer was
    lost (a dropped connection) gets the model; once it learned, the name is taken."""
    first = create(client, spec())
    again = client.post("/v1/models", json=spec())
    assert again.status_code == 201, again.text
    assert again.json()["created_at"] == first["created_at"]
    assert client.post("/v1/models/m/learn", json={"x": [1, 2, 3, 4], "y": 0}).status_code == 200
    r = client.post("/v1/models", json=spec())
    assert r.status_code == 409 and "already exists" in r.json()["detail"]


def test_unknown_model_is_404_everywhere(client: httpx.Client) -> None:
    for method, path, body in [
        ("GET", "/v1/models/nope", None),
        ("DELETE", "/v1/models/nope", None),
        ("POST", "/v1/models/nope/learn", {"x": [1, 2, 3, 4], "y": 0}),
        ("POST", "/v1/models/nope/learn/batch", {"samples": [{"x": [1, 2, 3, 4], "y": 0}]}),
        ("POST", "/v1/models/nope/predict", {"x": [1, 2, 3, 4]}),
        ("POST", "/v1/models/nope/predict/batch", {"samples": [{"x": [1, 2, 3, 4]}]}),
        ("GET", "/v1/models/nope/stats", None),
        ("GET", "/v1/models/nope/metrics", None),
    ]:
        r = client.request(method, path, json=body)
        assert r.status_code == 404, (method, path, r.text)
        assert "nope" in r.json()["detail"]


def test_invalid_names_and_specs_are_422(client: httpx.Client, rds: redis.Redis, prefix: str) -> None:
    bad = [
        spec("bad name"),
        spec("-leading-dash"),
        spec("x" * 65),
        {**spec(), "task": "clustering"},
        {**spec(), "num_classes": 1},
        {k: v for k, v in spec().items() if k != "input_shape"},
        {**spec(), "optimizer": {"kind": "sgd", "lr": -1}},
        {**spec(), "norm": {"alpha_fwd": 1.5}},
        {**spec(), "unknown_field": 1},
        regression_spec(num_classes=3),
    ]
    for body in bad:
        r = client.post("/v1/models", json=body)
        assert r.status_code == 422, (body, r.text)
        assert isinstance(r.json()["detail"], str) and r.json()["detail"]
    r = client.post(
        "/v1/models", content=b'{"name": "m", "task": ', headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert client.get("/v1/models").json() == {"models": []}
    assert not rds.exists(keys.catalog_key(prefix))
    assert not list(rds.scan_iter(match=f"{prefix}:model:*"))


def test_invalid_name_in_path_is_422(client: httpx.Client) -> None:
    r = client.get("/v1/models/bad%20name")
    assert r.status_code == 422
    assert "invalid model name" in r.json()["detail"]


def test_delete_removes_every_key(client: httpx.Client, rds: redis.Redis, prefix: str) -> None:
    create(client, spec("gone"))
    create(client, spec("kept"))
    r = client.post("/v1/models/gone/learn/batch", json={"samples": samples(5)})
    assert r.status_code == 200
    r = client.delete("/v1/models/gone")
    assert r.status_code == 204 and r.content == b""
    assert client.get("/v1/models/gone").status_code == 404
    assert not list(rds.scan_iter(match=f"{prefix}:model:{{gone}}:*"))
    kept = sorted(k.decode() for k in rds.scan_iter(match=f"{prefix}:model:*"))
    assert kept == [f"{prefix}:model:{{kept}}:{kind}" for kind in ("lease", "meta", "snapshot", "spec")]
    assert list(rds.hkeys(keys.catalog_key(prefix))) == [b"kept"]
    # The name can be reused, and the new model starts from scratch.
    assert create(client, spec("gone"))["step"] == 0


def test_delete_with_published_stats_removes_norm_and_stats_keys(
    make_settings, rds: redis.Redis, prefix: str
) -> None:
    with ThreadServer(make_settings(STATS_EVERY_STEPS=1)) as srv, srv.client() as c:
        create(c, spec())
        assert c.post("/v1/models/m/learn/batch", json={"samples": samples(3)}).status_code == 200
        wait_for(lambda: rds.exists(keys.stats_key(prefix, "m")), 10, "stats to be published")
        assert c.delete("/v1/models/m").status_code == 204
    assert not list(rds.scan_iter(match=f"{prefix}:model:*"))


def test_models_come_back_after_a_restart(make_settings) -> None:
    settings = make_settings()
    with ThreadServer(settings) as srv, srv.client() as c:
        create(c, spec("one"))
        create(c, regression_spec("two"))
        assert c.post("/v1/models/one/learn/batch", json={"samples": samples(4)}).status_code == 200
    with ThreadServer(settings) as srv, srv.client() as c:
        models = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        assert set(models) == {"one", "two"}
        assert models["one"]["step"] == 4 and models["two"]["step"] == 0
        assert models["one"]["updated_at"] is not None
