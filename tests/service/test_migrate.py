"""The key layout before replicas (store/migrate.py): a service started on data written
in the old layout moves it, losing nothing: the snapshot, the log after it (its ids
and Idempotency-Keys), the stats history (its ids), and the snapshot's inline records."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import orjson
import pytest
import redis

from model.learner import OnlineLearner
from service.live import Outcome
from service.store import keys
from tests.service.conftest import PROBES, samples, spec
from tests.service.reference import probe_predictions
from tests.service.servers import ProcessServer
from tests.service.test_ordering import _service_env


def _write_legacy_model(rds: redis.Redis, p: str) -> list[dict]:
    """What the service before replicas left in Redis for a model that learned five
    samples: a snapshot after three of them, two log entries after it."""
    body = spec("old")
    sent = samples(5)
    learner = OnlineLearner(body)
    early = learner.learn_many([s["x"] for s in sent[:3]], [s["y"] for s in sent[:3]])
    base = f"{p}:model:old"
    t0 = int(time.time() * 1000) - 5000  # the old service stopped a few seconds ago
    rds.set(f"{base}:spec", learner.spec.model_dump_json())
    for i, s in enumerate(sent):
        fields = {b"op": b"learn", b"kind": b"one", b"samples": orjson.dumps([[s["x"], s["y"]]])}
        if i == 4:
            fields[b"ikey"] = b"k-log"
        rds.xadd(f"{base}:log", fields, id=f"{t0}-{i + 1}")  # type: ignore[arg-type]
    rds.xtrim(f"{base}:log", minid=f"{t0}-4")  # the snapshot has the first three
    k2 = orjson.dumps([[sent[1]["x"], sent[1]["y"]]])
    record = Outcome("one", 2, [early[1]]).to_json()
    rds.hset(
        f"{base}:snapshot",
        mapping={
            b"format": b"1",
            b"state": learner.state_bytes(),
            b"step": b"3",
            b"log_id": f"{t0}-3".encode(),
            b"created_at": b"1700000000.0",
            b"updated_at": b"1700000000.5",
            b"snapshot_at": b"1700000001.0",
            b"idempotency": orjson.dumps(
                [["k-snap", hashlib.blake2b(k2, digest_size=16).hexdigest(), record]]
            ),
        },
    )
    rds.xadd(f"{base}:stats", {b"step": b"3", b"t": b"1.0", b"layers": b"[]"}, id="1700000000100-0")
    rds.hset(f"{base}:norm:input_norm", mapping={b"step": b"3", b"mu": b"[0.0]"})
    rds.sadd(f"{p}:models", "old")
    return sent


@pytest.mark.timeout(120)
def test_the_legacy_layout_is_migrated_at_start_up(
    redis_url: str, prefix: str, rds: redis.Redis, tmp_path: Path
) -> None:
    sent = _write_legacy_model(rds, prefix)
    srv = ProcessServer(_service_env(redis_url, prefix), tmp_path / "service.log").start()
    try:
        with srv.client() as c:
            model = c.get("/v1/models/old").json()
            assert model["step"] == 5 and model["status"] == "ok"
            ref = OnlineLearner(spec("old"))
            ref.learn_many([s["x"] for s in sent], [s["y"] for s in sent])
            got = c.post("/v1/models/old/predict/batch", json={"samples": [{"x": x} for x in PROBES]}).json()
            assert got == probe_predictions(ref, PROBES)
            # Both kinds of records survived: the snapshot's inline one, and the log's key.
            again = c.post("/v1/models/old/learn", json=sent[1], headers={"Idempotency-Key": "k-snap"})
            assert again.headers.get("idempotent-replayed") == "true" and again.json()["step"] == 2
            again = c.post("/v1/models/old/learn", json=sent[4], headers={"Idempotency-Key": "k-log"})
            assert again.headers.get("idempotent-replayed") == "true" and again.json()["step"] == 5
            other = c.post("/v1/models/old/learn", json=sent[0], headers={"Idempotency-Key": "k-snap"})
            assert other.status_code == 422
            history = c.get("/v1/models/old/stats/history").json()["entries"]
            assert history[0]["id"] == "1700000000100-0"
            assert c.post("/v1/models/old/learn", json=samples(1, seed=9)[0]).json()["step"] == 6
    finally:
        srv.stop()
    assert not rds.exists(f"{prefix}:models")
    assert not list(rds.scan_iter(match=f"{prefix}:model:old:*"))
    assert rds.hget(keys.catalog_key(prefix), "old") is not None
    assert rds.hget(keys.snapshot_key(prefix, "old"), "step") == b"6"
