"""One rule for every body the API reads: a malformed one is a 4xx whose ``detail``
names the problem, and changes nothing (api/bodies.py, api/limits.py, errors.py,
model/spec.py). Also the smaller manners: /healthz names Redis's state, 405 lists
every allowed method, a stats id Redis refuses is the client's error."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import redis

from service.store import keys
from tests.service.conftest import create, samples, spec
from tests.service.reference import model_state

JSON = {"content-type": "application/json"}
DEEP = b"[" * 1000 + b"1" + b"]" * 1000  # under orjson's nesting limit, far over any input rank
#: Every route that reads a body, and a valid body for the model ``m`` of ``spec()``.
BODY_ROUTES: dict[str, bytes] = {
    "/v1/models": b'{"name": "other", "task": "regression", "input_shape": [2]}',
    "/v1/models/m/learn": b'{"x": [1, 2, 3, 4], "y": 1}',
    "/v1/models/m/learn/batch": b'{"samples": [{"x": [1, 2, 3, 4], "y": 1}]}',
    "/v1/models/m/predict": b'{"x": [1, 2, 3, 4]}',
    "/v1/models/m/predict/batch": b'{"samples": [{"x": [1, 2, 3, 4]}]}',
}
#: Malformed bodies any of those routes may receive: (body, a word the detail must hold).
MALFORMED: list[tuple[bytes, str]] = [
    (b"", "empty"),
    (b"\xff\xfe{}", "UTF-8"),
    (b'{"x": "\xe9t\xe9"}', "UTF-8"),
    (b'{"x": [1, 2', "malformed JSON"),
    (b"[" * 2000 + b"]" * 2000, "malformed JSON"),  # over the parser's own limit
    (b"null", ""),
    (b"[]", ""),
    (b'"text"', ""),
    (b"1e999", "malformed JSON"),
    (b'{"x": ' + DEEP + b', "y": 1}', ""),
    (b'{"samples": [{"x": ' + DEEP + b', "y": 1}]}', ""),
]


def _state(c: httpx.Client, rds: redis.Redis, prefix: str) -> dict[str, Any]:
    return {
        **model_state(c),
        "log": rds.xlen(keys.log_key(prefix, "m")),
        "models": sorted(m["name"] for m in c.get("/v1/models").json()["models"]),
    }


def test_every_malformed_body_is_4xx_and_named(client: httpx.Client, rds: redis.Redis, prefix: str) -> None:
    create(client, spec())
    client.post("/v1/models/m/learn/batch", json={"samples": samples(3)})
    before = _state(client, rds, prefix)
    for path in BODY_ROUTES:
        for body, word in MALFORMED:
            r = client.post(path, content=body, headers=JSON)
            assert 400 <= r.status_code < 500, (path, body[:40], r.status_code, r.text[:200])
            detail = r.json()["detail"]
            assert isinstance(detail, str) and detail and word in detail, (path, body[:40], detail)
    assert _state(client, rds, prefix) == before


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        ("learn", b'{"x": ' + DEEP + b', "y": 1}', "x"),
        ("learn", b'{"x": [1, 2, 3, ' + DEEP + b'], "y": 1}', "x[3]"),
        ("learn", b'{"x": [1, 2, 3, 4], "y": ' + DEEP + b"}", "y"),
        (
            "learn/batch",
            b'{"samples": [{"x": [1, 2, 3, 4], "y": 1}, {"x": ' + DEEP + b', "y": 1}]}',
            "samples[1].x",
        ),
        ("predict", b'{"x": ' + DEEP + b"}", "x"),
        ("predict/batch", b'{"samples": [{"x": ' + DEEP + b"}]}", "samples[0].x"),
    ],
)
def test_nesting_is_bounded_by_the_input_rank(
    client: httpx.Client, rds: redis.Redis, prefix: str, path: str, body: bytes, where: str
) -> None:
    """A thousand levels deep used to exhaust Python's recursion (500)."""
    create(client, spec())
    before = _state(client, rds, prefix)
    r = client.post(f"/v1/models/m/{path}", content=body, headers=JSON)
    assert r.status_code == 422, r.text[:300]
    detail = r.json()["detail"]
    assert where in detail and "nested deeper" in detail, detail
    assert _state(client, rds, prefix) == before


def test_inputs_nested_to_their_shape_still_work(client: httpx.Client) -> None:
    create(client, spec("img", input_shape=[1, 2, 2], network={"kind": "cnn", "channels": [2]}))
    r = client.post("/v1/models/img/learn", json={"x": [[[1, 2], [3, 4]]], "y": 1})
    assert r.status_code == 200, r.text
    r = client.post("/v1/models/img/learn", json={"x": [[[[1], [2]], [[3], [4]]]], "y": 1})
    assert r.status_code == 422 and "nested deeper" in r.json()["detail"]


ABSURD: list[tuple[dict[str, Any], str]] = [
    ({"optimizer": {"weight_decay": 1e308}}, "weight_decay"),
    ({"optimizer": {"lr": 1e308}}, "lr"),
    ({"optimizer": {"clip_grad_norm": 1e308}}, "clip_grad_norm"),
    ({"optimizer": {"skip_lr_scale": 1e9}}, "skip_lr_scale"),
    ({"optimizer": {"betas": [0.9, 1e308]}}, "betas"),
    ({"norm": {"eps": 1e-300}}, "eps"),
    ({"norm": {"eps": 1e308}}, "eps"),
    ({"norm": {"ls_eps": 1e-300}}, "ls_eps"),
    ({"norm": {"clamp_val": 1e308}}, "clamp_val"),
    ({"norm": {"ls_group_size": 10**12}}, "ls_group_size"),
    ({"network": {"hidden": [10**9]}}, "hidden"),
    ({"network": {"kind": "rnn", "stateful": True, "bptt": 10**6}, "input_shape": [4]}, "bptt"),
    ({"seed": 2**64}, "seed"),
    ({"num_classes": 10**9}, "num_classes"),
    ({"input_shape": [2**31]}, "input_shape"),
]


def test_absurd_hyper_parameters_are_refused_by_name(client: httpx.Client) -> None:
    """``weight_decay: 1e308`` used to be accepted and turn every weight into NaN."""
    for change, field in ABSURD:
        body = {**spec(), **change}
        r = client.post("/v1/models", json=body)
        assert r.status_code == 422, (change, r.text)
        assert field in r.json()["detail"], (change, r.json()["detail"])
    assert client.get("/v1/models").json()["models"] == []


def test_the_schema_carries_the_bounds(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/models"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    props = body["properties"]
    assert props["name"]["pattern"].startswith("^[A-Za-z0-9]")
    assert props["num_classes"]["maximum"] == 100_000
    assert props["input_shape"]["items"]["minimum"] == 1
    optimizer = props["optimizer"]["properties"]
    assert optimizer["weight_decay"]["maximum"] == 1.0
    assert props["network"]["properties"]["hidden"]["items"]["maximum"] == 8192


def test_healthz_names_the_state_of_redis(client: httpx.Client) -> None:
    assert client.get("/healthz").json()["redis"] == "up"


def test_405_lists_every_method_of_the_path(client: httpx.Client) -> None:
    create(client, spec())
    for method, path, allowed in [
        ("PUT", "/v1/models/m", "GET, DELETE"),
        ("PATCH", "/v1/models", "GET, POST"),
        ("OPTIONS", "/v1/models/m/learn", "POST"),
        ("DELETE", "/healthz", "GET"),
    ]:
        r = client.request(method, path)
        assert r.status_code == 405, (method, path, r.text)
        assert r.headers["allow"] == allowed, (method, path, r.headers)
        assert method in r.json()["detail"]


def test_a_stats_id_redis_refuses_is_422(client: httpx.Client) -> None:
    create(client, spec())
    top = f"{2**64 - 1}-{2**64 - 1}"  # well-formed, but nothing can come after it
    r = client.get("/v1/models/m/stats/history", params={"since": top})
    assert r.status_code == 422, r.text
    assert top in r.json()["detail"]


def test_the_network_kind_is_resolved_in_the_spec(client: httpx.Client) -> None:
    """The dashboard's pill and index read ``spec.network.kind``: never null."""
    assert create(client, spec())["spec"]["network"]["kind"] == "mlp"
    seq = create(client, {"name": "seq", "task": "regression", "input_shape": [5, 2]})
    assert seq["spec"]["network"]["kind"] == "rnn"
    listed = {m["name"]: m["spec"]["network"]["kind"] for m in client.get("/v1/models").json()["models"]}
    assert listed == {"m": "mlp", "seq": "rnn"}
