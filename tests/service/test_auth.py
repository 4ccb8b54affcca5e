"""API keys: 401 without or with a wrong key, 403 for read-only keys on writes
(auth.py); /healthz and /readyz stay open."""

from __future__ import annotations

import logging

import httpx
import pytest

from tests.service.conftest import create, samples, spec
from tests.service.servers import ThreadServer

WRITER = "writer-key-123"
READER = "reader-key-456"


@pytest.fixture
def secured(make_settings) -> ThreadServer:
    with ThreadServer(make_settings(API_KEYS=[WRITER, "second-writer"], READONLY_API_KEYS=[READER])) as srv:
        yield srv


def _as(key: str | None) -> dict[str, str]:
    return {} if key is None else {"Authorization": f"Bearer {key}"}


ENDPOINTS = [
    ("GET", "/v1/models", None, "read"),
    ("GET", "/v1/models/m", None, "read"),
    ("POST", "/v1/models/m/predict", {"x": [1, 2, 3, 4]}, "read"),
    ("POST", "/v1/models/m/predict/batch", {"samples": [{"x": [1, 2, 3, 4]}]}, "read"),
    ("GET", "/v1/models/m/stats", None, "read"),
    ("GET", "/v1/models/m/metrics", None, "read"),
    ("GET", "/metrics", None, "read"),
    ("POST", "/v1/models/m/learn", {"x": [1, 2, 3, 4], "y": 0}, "write"),
    ("POST", "/v1/models/m/learn/batch", {"samples": [{"x": [1, 2, 3, 4], "y": 0}]}, "write"),
    ("POST", "/v1/models", spec("other"), "write"),
]


def test_every_endpoint_needs_a_key(secured: ThreadServer) -> None:
    with secured.client(headers=_as(WRITER)) as w:
        create(w, spec())
    with secured.client() as c:
        for method, path, body, _ in [*ENDPOINTS, ("DELETE", "/v1/models/m", None, "write")]:
            for headers in (
                {},
                _as("wrong-key-000"),
                {"Authorization": "Basic abc"},
                {"Authorization": "Bearer"},
            ):
                r = c.request(method, path, json=body, headers=headers)
                assert r.status_code == 401, (method, path, headers, r.text)
                assert r.headers["www-authenticate"] == "Bearer"
                assert r.json()["detail"]
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200


def test_read_only_keys_read_but_do_not_write(secured: ThreadServer) -> None:
    with secured.client(headers=_as(WRITER)) as w, secured.client(headers=_as(READER)) as r:
        create(w, spec())
        w.post("/v1/models/m/learn/batch", json={"samples": samples(3)})
        for method, path, body, access in ENDPOINTS:
            resp = r.request(method, path, json=body)
            if access == "read":
                assert resp.status_code == 200, (path, resp.text)
            else:
                assert resp.status_code == 403, (path, resp.text)
                assert "read-only" in resp.json()["detail"]
        assert r.delete("/v1/models/m").status_code == 403
        assert w.get("/v1/models/m").json()["step"] == 3  # nothing a reader did changed the model
        assert w.post("/v1/models/m/learn", json=samples(1)[0]).status_code == 200
        with secured.client(headers=_as("second-writer")) as w2:
            assert w2.delete("/v1/models/m").status_code == 204


def test_open_service_warns_at_start_up(make_settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="service.config")
    with ThreadServer(make_settings()) as srv, httpx.Client(base_url=srv.url) as c:
        assert c.get("/v1/models").status_code == 200
    assert any("OPEN" in rec.getMessage() for rec in caplog.records)


def test_secured_service_does_not_warn(make_settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="service.config")
    with ThreadServer(make_settings(API_KEYS=[WRITER])):
        pass
    assert not any("OPEN" in rec.getMessage() for rec in caplog.records)
