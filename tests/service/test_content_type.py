"""Every request body must be declared ``application/json`` (415 otherwise), on the hot
learn path too: a web page can post ``text/plain`` to a keyless service on localhost
without a CORS preflight, never ``application/json`` (api/limits.py, api/hot.py)."""

from __future__ import annotations

import httpx
import redis

from service.store import keys
from tests.service.conftest import create, samples, spec
from tests.service.reference import model_state
from tests.service.test_hardening import BODY_ROUTES

REFUSED = [
    None,  # no Content-Type at all
    "text/plain",
    "text/plain;charset=UTF-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/json-patch+json",
    "application/json; charset=latin-1",
]
ACCEPTED = ["application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8"]


def test_non_json_bodies_are_415_and_change_nothing(
    client: httpx.Client, rds: redis.Redis, prefix: str
) -> None:
    create(client, spec())
    client.post("/v1/models/m/learn/batch", json={"samples": samples(3)})
    before = {**model_state(client), "log": rds.xlen(keys.log_key(prefix, "m"))}
    for path, body in BODY_ROUTES.items():
        for content_type in REFUSED:
            headers = {} if content_type is None else {"content-type": content_type}
            r = client.post(path, content=body, headers=headers)
            assert r.status_code == 415, (path, content_type, r.text)
            assert "application/json" in r.json()["detail"], r.text
    assert {**model_state(client), "log": rds.xlen(keys.log_key(prefix, "m"))} == before
    assert [m["name"] for m in client.get("/v1/models").json()["models"]] == ["m"]


def test_json_with_parameters_is_accepted(client: httpx.Client) -> None:
    create(client, spec())
    for i, content_type in enumerate(ACCEPTED, start=1):
        r = client.post(
            "/v1/models/m/learn",
            content=b'{"x": [1, 2, 3, 4], "y": 1}',
            headers={"content-type": content_type},
        )
        assert r.status_code == 200 and r.json()["step"] == i, (content_type, r.text)
