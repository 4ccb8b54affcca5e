"""One model's write that Redis refuses by closing the connection (a value over the
server's ``proto-max-bulk-len``) is that model's problem: Redis is not marked down for
the others (store/connection.py confirms an outage with a ping of its own)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import redis

from tests.service.conftest import create, samples, spec
from tests.service.servers import RedisProcess, ThreadServer

BIG = spec("big", input_shape=[64], network={"kind": "mlp", "hidden": [1024, 1024]})  # ~13 MB of state


@pytest.mark.timeout(120)
def test_a_value_redis_refuses_does_not_fail_other_models(
    make_settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    own = RedisProcess(tmp_path, persist=False).start()
    rds = redis.Redis.from_url(own.url)
    rds.config_set("proto-max-bulk-len", 1024 * 1024)  # the smallest Redis allows
    sent = samples(6)
    try:
        with ThreadServer(make_settings(REDIS_URL=own.url)) as srv, srv.client() as c:
            create(c, spec())
            assert c.post("/v1/models/m/learn", json=sent[0]).status_code == 200
            with caplog.at_level(logging.WARNING, logger="service.store.connection"):
                r = c.post("/v1/models", json=BIG)
                assert r.status_code == 503, r.text  # Redis dropped the connection of that write
                for i, s in enumerate(sent[1:], start=2):
                    learned = c.post("/v1/models/m/learn", json=s)
                    assert learned.status_code == 200 and learned.json()["step"] == i, learned.text
                assert c.get("/readyz").status_code == 200
            assert srv.app.state.health.up
            assert not [rec for rec in caplog.records if "learns answer 503" in rec.getMessage()]
            assert any("not an outage" in rec.getMessage() for rec in caplog.records)
    finally:
        rds.close()
        own.stop()
