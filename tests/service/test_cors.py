"""CORS is closed unless ``ONLINENORM_CORS_ORIGINS`` lists the origins (config.py,
app.py): a listed origin gets the headers on every route, the hot learn path included;
any other origin, or every origin by default, gets none."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from service.config import Settings
from tests.service.conftest import create, spec
from tests.service.servers import ThreadServer

GOOD = {"x": [1, 2, 3, 4], "y": 1}
PREFLIGHT = {"access-control-request-method": "POST", "access-control-request-headers": "content-type"}


def test_cors_is_closed_by_default(make_settings: Callable[..., Settings]) -> None:
    with ThreadServer(make_settings()) as srv, srv.client() as c:
        create(c, spec())
        r = c.options("/v1/models/m/learn", headers={"origin": "http://evil.example", **PREFLIGHT})
        assert r.status_code == 405 and "access-control-allow-origin" not in r.headers
        r = c.post("/v1/models/m/learn", json=GOOD, headers={"origin": "http://evil.example"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_listed_origins_only(make_settings: Callable[..., Settings]) -> None:
    ok = "http://dashboard.example:8080"
    with ThreadServer(make_settings(CORS_ORIGINS=[ok])) as srv, srv.client() as c:
        create(c, spec())
        r = c.options("/v1/models/m/learn", headers={"origin": ok, **PREFLIGHT})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ok
        r = c.post("/v1/models/m/learn", json=GOOD, headers={"origin": ok})
        assert r.status_code == 200 and r.json()["step"] == 1
        assert r.headers["access-control-allow-origin"] == ok
        r = c.post("/v1/models/m/learn", json=GOOD, headers={"origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers
        r = c.options("/v1/models/m/learn", headers={"origin": "http://evil.example", **PREFLIGHT})
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize("origins", ["*", "http://a.example/path", "dashboard.example"])
def test_wildcards_and_non_origins_are_refused(origins: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONLINENORM_CORS_ORIGINS", origins)
    with pytest.raises(ValueError, match="CORS origin"):
        Settings()


def test_origins_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONLINENORM_CORS_ORIGINS", "http://a.example, https://b.example:8443")
    assert Settings().CORS_ORIGINS == ["http://a.example", "https://b.example:8443"]
