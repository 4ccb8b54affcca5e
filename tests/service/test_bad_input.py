"""Bad input answers 4xx with a JSON ``detail`` naming the problem, and changes nothing:
not the model (stats, metrics), not the log (api/bodies.py, api/limits.py, errors.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from service.store import keys
from tests.service.conftest import create, regression_spec, samples, spec
from tests.service.reference import model_state
from tests.service.servers import ThreadServer

GOOD = {"x": [1.0, 2.0, 3.0, 4.0], "y": 1}
JSON = {"content-type": "application/json"}

# (path suffix, raw body, expected status, a word the message must contain)
BAD_LEARNS: list[tuple[str, bytes, int, str]] = [
    ("learn", b'{"x": [1, 2, 3, 4], "y": ', 422, "malformed JSON"),
    ("learn", b"not json", 422, "malformed JSON"),
    ("learn", b"", 422, "empty body"),
    ("learn", b'{"x": [NaN, 2, 3, 4], "y": 1}', 422, "malformed JSON"),
    ("learn", b'{"x": [Infinity, 2, 3, 4], "y": 1}', 422, "malformed JSON"),
    ("learn", b'{"x": [-Infinity, 2, 3, 4], "y": 1}', 422, "malformed JSON"),
    ("learn", b'{"x": [1e400, 2, 3, 4], "y": 1}', 422, "malformed JSON"),
    ("learn", b'{"x": [1e39, 2, 3, 4], "y": 1}', 422, "x"),  # finite in JSON, not in float32
    ("learn", b'{"x": [1, 2, 3], "y": 1}', 422, "shape"),
    ("learn", b'{"x": [[1, 2], [3, 4]], "y": 1}', 422, "shape"),
    ("learn", b'{"x": 5, "y": 1}', 422, "shape"),
    ("learn", b'{"x": [], "y": 1}', 422, "shape"),
    ("learn", b'{"x": [1, [2], 3, 4], "y": 1}', 422, "x"),
    ("learn", b'{"x": ["1", 2, 3, 4], "y": 1}', 422, "string"),
    ("learn", b'{"x": [null, 2, 3, 4], "y": 1}', 422, "null"),
    ("learn", b'{"x": [true, 2, 3, 4], "y": 1}', 422, "boolean"),
    ("learn", b'{"x": [{"a": 1}, 2, 3, 4], "y": 1}', 422, "object"),
    ("learn", b'{"x": [1, 2, 3, 4], "y": 3}', 422, "out of range"),
    ("learn", b'{"x": [1, 2, 3, 4], "y": -1}', 422, "out of range"),
    ("learn", b'{"x": [1, 2, 3, 4], "y": 1.5}', 422, "class index"),
    ("learn", b'{"x": [1, 2, 3, 4], "y": "1"}', 422, "string"),
    ("learn", b'{"x": [1, 2, 3, 4], "y": true}', 422, "boolean"),
    ("learn", b'{"x": [1, 2, 3, 4], "y": null}', 422, "null"),
    ("learn", b'{"x": [1, 2, 3, 4]}', 422, "missing 'y'"),
    ("learn", b'{"y": 1}', 422, "missing 'x'"),
    ("learn", b'{"x": [1, 2, 3, 4], "y": 1, "z": 0}', 422, "unknown field 'z'"),
    ("learn", b"[1, 2, 3, 4]", 422, "JSON object"),
    ("learn/batch", b'{"samples": []}', 422, "empty"),
    ("learn/batch", b'{"samples": {"x": [1, 2, 3, 4], "y": 1}}', 422, "list"),
    ("learn/batch", b'{"x": [1, 2, 3, 4], "y": 1}', 422, "samples"),
    (
        "learn/batch",
        b'{"samples": [{"x": [1, 2, 3, 4], "y": 1}, {"x": [1, 2, 3, 4], "y": 9}]}',
        422,
        "samples[1]",
    ),
    (
        "learn/batch",
        b'{"samples": [{"x": [1, 2, 3, 4], "y": 1}, {"x": [1, 2], "y": 0}]}',
        422,
        "samples[1].x",
    ),
    ("learn/batch", b'{"samples": [{"x": [1, 2, 3, 4], "y": 1}, [1, 2, 3, 4]]}', 422, "samples[1]"),
    (
        "learn/batch",
        b'{"samples": [' + b", ".join([b'{"x": [1, 2, 3, 4], "y": 1}'] * 11) + b"]}",
        413,
        "limit",
    ),
    ("learn", b'{"x": [' + b", ".join([b"1.0"] * 2000) + b'], "y": 1}', 413, "too large"),
    ("predict", b'{"x": [1, 2, 3]}', 422, "shape"),
    ("predict", b'{"x": [NaN, 1, 2, 3]}', 422, "malformed JSON"),
    ("predict", b'{"x": [1, 2, 3, 4], "y": 1}', 422, "unknown field 'y'"),
    ("predict/batch", b'{"samples": [{"x": [1, 2, 3, 4]}, {"x": [1, 2, 3]}]}', 422, "samples[1].x"),
    ("predict/batch", b'{"samples": []}', 422, "empty"),
    ("predict/batch", b'{"samples": [' + b", ".join([b'{"x": [1, 2, 3, 4]}'] * 11) + b"]}", 413, "limit"),
]


def _snapshot_of(
    client: httpx.Client, rds: redis.Redis, prefix: str, ecm_diagnostics: bool = True
) -> dict[str, Any]:
    return {
        **model_state(client, ecm_diagnostics=ecm_diagnostics),
        "log": rds.xlen(keys.log_key(prefix, "m")),
    }


@pytest.fixture
def small_limits_server(make_settings) -> Any:
    with ThreadServer(make_settings(MAX_BATCH_SAMPLES=10, MAX_BODY_BYTES=4096)) as srv:
        yield srv


def test_bad_inputs_are_4xx_and_change_nothing(
    small_limits_server: ThreadServer, rds: redis.Redis, prefix: str
) -> None:
    with small_limits_server.client() as c:
        create(c, spec())
        c.post("/v1/models/m/learn/batch", json={"samples": samples(5)})
        before = _snapshot_of(c, rds, prefix)
        for suffix, body, status, word in BAD_LEARNS:
            r = c.post(f"/v1/models/m/{suffix}", content=body, headers=JSON)
            assert r.status_code == status, (suffix, body[:80], r.text)
            detail = r.json()["detail"]
            assert isinstance(detail, str) and word in detail, (body[:80], detail)
        assert _snapshot_of(c, rds, prefix) == before
        # ... and the model goes on.
        assert c.post("/v1/models/m/learn", json=GOOD).json()["step"] == 6


def test_regression_targets_are_checked(client: httpx.Client, rds: redis.Redis, prefix: str) -> None:
    create(client, regression_spec("m", output_dim=2))
    before = _snapshot_of(client, rds, prefix)
    for y, word in [(1.0, "2"), ([1.0, 2.0, 3.0], "2"), (["a", 1.0], "string"), (None, "null")]:
        r = client.post("/v1/models/m/learn", json={"x": [1, 2, 3], "y": y})
        assert r.status_code == 422 and word in r.json()["detail"], r.text
    assert _snapshot_of(client, rds, prefix) == before


def test_invalid_idempotency_key_is_422(client: httpx.Client, rds: redis.Redis, prefix: str) -> None:
    create(client, spec())
    before = _snapshot_of(client, rds, prefix)
    for key in ["has space", "x" * 256, "tab\tkey"]:
        r = client.post("/v1/models/m/learn", json=GOOD, headers={"Idempotency-Key": key})
        assert r.status_code == 422 and "Idempotency-Key" in r.json()["detail"]
    assert _snapshot_of(client, rds, prefix) == before


BOOM = {"x": [1e30, 1e30, 1e30], "y": 1e30}  # finite in float32; its squared error is not


def test_non_finite_step_is_rolled_back_and_the_model_goes_on(
    make_settings, rds: redis.Redis, prefix: str
) -> None:
    settings = make_settings(SNAPSHOT_ON_SHUTDOWN=False)
    good = [{"x": [1.0, 2.0, 3.0], "y": 0.5}, {"x": [-1.0, 0.0, 2.0], "y": -0.5}]
    with ThreadServer(settings) as srv, srv.client() as c:
        create(c, regression_spec("m", optimizer={"kind": "sgd", "lr": 0.01, "clip_grad_norm": None}))
        c.post("/v1/models/m/learn/batch", json={"samples": good})
        before = _snapshot_of(c, rds, prefix, ecm_diagnostics=False)
        r = c.post("/v1/models/m/learn", json=BOOM)
        assert r.status_code == 422, r.text
        assert "non-finite" in r.json()["detail"] and r.json()["step"] == 2
        after = _snapshot_of(c, rds, prefix, ecm_diagnostics=False)
        assert after["log"] == before["log"] + 2  # the accepted request, and its rollback record
        after["log"] = before["log"]
        assert after == before
        # A batch stops at the non-finite sample: those before it stay applied.
        r = c.post("/v1/models/m/learn/batch", json={"samples": [good[0], BOOM, good[1]]})
        assert r.status_code == 422
        body = r.json()
        assert body["index"] == 1 and body["step"] == 3 and len(body["results"]) == 1
        assert body["results"][0]["step"] == 3
        assert c.post("/v1/models/m/learn", json=good[1]).json()["step"] == 4
        live = _snapshot_of(c, rds, prefix, ecm_diagnostics=False)
        probe = c.post("/v1/models/m/predict", json={"x": [0.3, 0.2, 0.1]}).json()
    assert rds.hget(keys.snapshot_key(prefix, "m"), "step") == b"0"  # so the restart replays the log
    # Same state after a restart: replay honours the rollbacks.
    with ThreadServer(settings) as srv, srv.client() as c:
        again = _snapshot_of(c, rds, prefix, ecm_diagnostics=False)
        live["log"] = again["log"]
        assert again["stats"] == live["stats"] and again["metrics"] == live["metrics"]
        assert c.post("/v1/models/m/predict", json={"x": [0.3, 0.2, 0.1]}).json() == probe


def test_non_finite_replay_without_rollback_records(make_settings, rds: redis.Redis, prefix: str) -> None:
    """Were the rollback record lost, deterministic replay reproduces the rollback."""
    settings = make_settings(SNAPSHOT_ON_SHUTDOWN=False)
    good = {"x": [1.0, 2.0, 3.0], "y": 0.5}
    with ThreadServer(settings) as srv, srv.client() as c:
        create(c, regression_spec("m", optimizer={"kind": "sgd", "lr": 0.01, "clip_grad_norm": None}))
        c.post("/v1/models/m/learn", json=good)
        assert c.post("/v1/models/m/learn/batch", json={"samples": [good, BOOM, good]}).status_code == 422
        c.post("/v1/models/m/learn", json=good)
        probe = c.post("/v1/models/m/predict", json={"x": [0.3, 0.2, 0.1]}).json()
        metrics = c.get("/v1/models/m/metrics").json()
    log_key = keys.log_key(prefix, "m")
    rollbacks = [i for i, f in rds.xrange(log_key) if f[b"op"] == b"rollback"]
    assert len(rollbacks) == 1
    rds.xdel(log_key, *rollbacks)
    with ThreadServer(settings) as srv, srv.client() as c:
        assert c.post("/v1/models/m/predict", json={"x": [0.3, 0.2, 0.1]}).json() == probe
        again = c.get("/v1/models/m/metrics").json()
        assert again["samples_seen"] == metrics["samples_seen"] == 3
        assert again["loss"] == metrics["loss"]


def test_chunked_body_over_the_limit_is_413(
    small_limits_server: ThreadServer, rds: redis.Redis, prefix: str
) -> None:
    """Without a Content-Length the body is counted as it streams in."""
    with small_limits_server.client() as c:
        create(c, spec())
        before = _snapshot_of(c, rds, prefix)

        def chunks() -> Iterator[bytes]:
            yield b'{"x": ['
            for _ in range(1000):
                yield b"1.0, "
            yield b'1.0], "y": 1}'

        r = c.post("/v1/models/m/learn", content=chunks(), headers=JSON)
        assert r.status_code == 413 and "too large" in r.json()["detail"]
        r = c.post("/v1/models", content=chunks(), headers=JSON)
        assert r.status_code == 413
        assert _snapshot_of(c, rds, prefix) == before
