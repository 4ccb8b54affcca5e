"""Redis that answers but refuses writes (out of memory: ``maxmemory`` with
``noeviction``) is not "unreachable": learns say what happened, readiness and
``/metrics`` show it, and it all comes back when Redis has room again
(store/connection.py, api/routes/health.py, errors.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from tests.service.conftest import create, samples, spec
from tests.service.servers import RedisProcess, ThreadServer, wait_for


@pytest.mark.timeout(120)
def test_out_of_memory_is_named_and_shown_by_readiness_and_metrics(make_settings, tmp_path: Path) -> None:
    own = RedisProcess(tmp_path, persist=False).start()
    rds = redis.Redis.from_url(own.url)
    sent = samples(3)
    try:
        with ThreadServer(make_settings(REDIS_URL=own.url)) as srv, srv.client() as c:
            create(c, spec())
            assert c.post("/v1/models/m/learn", json=sent[0]).status_code == 200
            rds.config_set("maxmemory-policy", "noeviction")
            rds.config_set("maxmemory", 1)  # every write is now refused

            r = c.post("/v1/models/m/learn", json=sent[1])
            assert r.status_code == 503, r.text
            detail = r.json()["detail"]
            assert "out of memory" in detail and "unreachable" not in detail, detail
            assert "not applied" in detail
            ready = c.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["redis"] == "out of memory" and "out of memory" in ready.json()["detail"]
            assert c.get("/healthz").json()["redis"] == "out of memory"
            metrics = c.get("/metrics").text
            assert "onlinenorm_redis_writable 0.0" in metrics and "onlinenorm_redis_up 1.0" in metrics
            # Predictions never needed Redis.
            assert c.post("/v1/models/m/predict", json={"x": sent[0]["x"]}).status_code == 200

            rds.config_set("maxmemory", 0)
            wait_for(lambda: c.get("/readyz").status_code == 200, 30, "readiness once Redis has room")
            assert "onlinenorm_redis_writable 1.0" in c.get("/metrics").text
            r = c.post("/v1/models/m/learn", json=sent[2])
            assert r.status_code == 200 and r.json()["step"] == 2, r.text
    finally:
        rds.close()
        own.stop()
