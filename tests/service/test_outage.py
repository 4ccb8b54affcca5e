"""Redis outages (store/connection.py, writer.py): learns answer 503 and change nothing,
predictions keep working from memory, and the service recovers by itself."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import redis

from model.learner import OnlineLearner
from service.store import keys, log
from tests.service.conftest import PROBES, create, samples, spec
from tests.service.reference import model_state, probe_predictions
from tests.service.servers import RedisProcess, ThreadServer, wait_for

PREDICT = {"samples": [{"x": x} for x in PROBES]}


@pytest.mark.timeout(120)
def test_learns_fail_fast_and_recover_when_redis_is_back(make_settings, tmp_path: Path) -> None:
    own = RedisProcess(tmp_path).start()
    settings = make_settings(REDIS_URL=own.url, SNAPSHOT_EVERY_STEPS=3, STATS_EVERY_STEPS=2)
    sent = samples(12)
    try:
        with ThreadServer(settings) as srv, srv.client() as c:
            create(c, spec())
            for s in sent[:4]:
                assert c.post("/v1/models/m/learn", json=s).status_code == 200
            before = model_state(c)
            own.stop()

            r = c.post("/v1/models/m/learn", json=sent[4])
            assert r.status_code == 503, r.text
            assert "not applied" in r.json()["detail"] and r.headers["retry-after"]
            assert c.post("/v1/models/m/learn/batch", json={"samples": sent[4:6]}).status_code == 503
            assert c.post("/v1/models", json=spec("new")).status_code == 503
            assert c.delete("/v1/models/m").status_code == 503
            assert c.get("/readyz").status_code == 503
            assert "onlinenorm_redis_up 0.0" in c.get("/metrics").text
            assert model_state(c) == before  # nothing logged, so nothing applied
            predicted = c.post("/v1/models/m/predict/batch", json=PREDICT)
            assert predicted.status_code == 200 and predicted.json()["step"] == 4

            own.start()
            wait_for(lambda: c.get("/readyz").status_code == 200, 30, "readiness after Redis is back")
            for i, s in enumerate(sent[4:], start=5):
                r = c.post("/v1/models/m/learn", json=s)
                assert r.status_code == 200, r.text
                assert r.json()["step"] == i
            # The snapshot and stats publishers survived the outage.
            rds = redis.Redis.from_url(own.url)
            wait_for(
                lambda: int(rds.hget(keys.snapshot_key(settings.KEY_PREFIX, "m"), "step")) >= 12,
                10,
                "snapshot",
            )
            wait_for(
                lambda: rds.hget(keys.norm_key(settings.KEY_PREFIX, "m", "input_norm"), "step") == b"12",
                10,
                "stats",
            )
            rds.close()
            final = c.post("/v1/models/m/predict/batch", json=PREDICT).json()
        ref = OnlineLearner(spec())
        ref.learn_many([s["x"] for s in sent], [s["y"] for s in sent])
        # The same batch of probes: a forward over three rows need not round like one over
        # one row (it does not on AMD EPYC), so predict_one is not the reference here.
        assert final == probe_predictions(ref, PROBES)
        # What Redis holds brings the model back as it was.
        with ThreadServer(settings) as srv, srv.client() as c:
            assert c.post("/v1/models/m/predict/batch", json=PREDICT).json() == final
    finally:
        own.stop()


@pytest.mark.timeout(120)
def test_a_quick_redis_restart_fails_no_learn(make_settings, tmp_path: Path) -> None:
    """Redis restarted (with its data) between two learns, faster than any health check
    notices: the pooled connections to the old process are dead, and the next learn
    must still be answered 200, not 503 "Connection closed by server" (redis-py 8
    skipped its check of pooled connections while maintenance notifications were on)."""
    own = RedisProcess(tmp_path).start()
    settings = make_settings(REDIS_URL=own.url)
    sent = samples(8)
    try:
        with ThreadServer(settings) as srv, srv.client() as c:
            create(c, spec())
            for i, s in enumerate(sent[:4], start=1):
                assert c.post("/v1/models/m/learn", json=s).json()["step"] == i
            for restart, s in enumerate(sent[4:], start=5):
                own.stop()
                own.start()  # same port, same append-only file
                r = c.post("/v1/models/m/learn", json=s)
                assert r.status_code == 200, f"after restart {restart - 4}: {r.text}"
                assert r.json()["step"] == restart
    finally:
        own.stop()


def test_a_logged_but_unanswered_request_is_applied_first(
    server: ThreadServer, rds: redis.Redis, prefix: str
) -> None:
    """A log write whose reply was lost may have reached Redis. The writer reads the log
    after its last applied entry in the same call as its next write, and applies what is
    there first, so the live model equals what a restart rebuilds."""
    s1, s2, lost, later = samples(4)
    with server.client() as c:
        create(c, spec())
        c.post("/v1/models/m/learn", json=s1)
        c.post("/v1/models/m/learn", json=s2)
        # As if the previous group's write reached Redis but its reply did not come back:
        replica = c.get("/healthz").json()["replica"]
        fields = log.learn_fields(orjson.dumps([[lost["x"], lost["y"]]]), "one", "lost-1", replica, "r-1")
        rds.xadd(keys.log_key(prefix, "m"), fields)  # type: ignore[arg-type]

        assert c.post("/v1/models/m/learn", json=later).json()["step"] == 4
        retry = c.post("/v1/models/m/learn", json=lost, headers={"Idempotency-Key": "lost-1"})
        assert retry.json()["step"] == 3 and retry.headers["idempotent-replayed"] == "true"
        ref = OnlineLearner(spec())
        for s in (s1, s2, lost, later):
            ref.learn_one(s["x"], s["y"])
        got = c.post("/v1/models/m/predict", json={"x": PROBES[1]}).json()
        assert got["probabilities"] == ref.predict_one(PROBES[1]).probabilities
