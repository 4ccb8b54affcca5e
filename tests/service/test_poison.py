"""A learn whose step fails inside the service (applier.py, writer.py, takeover.py):
rolled back completely, recorded in the log, skipped identically on replay; the model
stays usable and a restart recovers it. And what cannot be applied is refused at create."""

from __future__ import annotations

import resource
from pathlib import Path

import psutil
import pytest
import redis

from service.store import keys
from tests.service.conftest import create, regression_spec
from tests.service.reference import model_state, probe_predictions
from tests.service.replicas import reference
from tests.service.servers import ProcessServer
from tests.service.test_ordering import _service_env

# A step of this cnn holds ~16 tensors of 2048 x 64 x 64 floats (32 MiB each): within the
# create limit, so a process whose address space runs out fails *inside* the step.
BIG = regression_spec("big", input_shape=[1, 64, 64], network={"kind": "cnn", "channels": [2048]})
PROBES = [[float((i * j) % 7) for j in range(64 * 64)] for i in range(2)]


def _sample(i: int) -> dict:
    return {"x": [float((i + j) % 5) for j in range(64 * 64)], "y": float(i)}


@pytest.mark.timeout(240)
def test_a_step_that_raises_is_rolled_back_recorded_and_skipped_on_replay(
    redis_url: str, prefix: str, rds: redis.Redis, tmp_path: Path
) -> None:
    env = _service_env(redis_url, prefix)
    srv = ProcessServer(env, tmp_path / "service.log").start()
    applied = [_sample(i) for i in (1, 2, 3)]
    try:
        with srv.client() as c:
            create(c, BIG)
            for s in applied:
                assert c.post("/v1/models/big/learn", json=s).status_code == 200
            before = model_state(c, "big", ecm_diagnostics=False)
            # Starve the service's address space: the next step's allocations fail.
            assert srv.proc is not None
            service = psutil.Process(srv.proc.pid)
            soft, hard = resource.prlimit(service.pid, resource.RLIMIT_AS)
            resource.prlimit(service.pid, resource.RLIMIT_AS, (service.memory_info().vms + 8 * 2**20, hard))
            try:
                r = c.post("/v1/models/big/learn", json=_sample(4))
            finally:
                resource.prlimit(service.pid, resource.RLIMIT_AS, (soft, hard))
            assert r.status_code == 422, r.text
            assert "the step failed" in r.json()["detail"] and "model is unchanged" in r.json()["detail"]
            assert r.json()["step"] == 3
            assert model_state(c, "big", ecm_diagnostics=False) == before  # nothing half-applied
            # The model goes on, and the failure is in the log for replays to honour.
            applied.append(_sample(5))
            assert c.post("/v1/models/big/learn", json=applied[-1]).json()["step"] == 4
            ops = [f[b"op"] for _, f in rds.xrange(keys.log_key(prefix, "big"))]
            assert ops.count(b"rollback") == 1
    finally:
        srv.kill()  # no final snapshot: the restart replays the failed entry's rollback
    srv = ProcessServer(env, tmp_path / "service.log").start()
    try:
        with srv.client() as c:
            assert c.get("/v1/models/big").json()["status"] == "ok"
            assert c.get("/v1/models/big").json()["step"] == 4
            got = c.post("/v1/models/big/predict/batch", json={"samples": [{"x": x} for x in PROBES]}).json()
            expected = probe_predictions(reference(BIG, applied), PROBES)
            assert got["step"] == expected["step"]
            assert [p["prediction"] for p in got["predictions"]] == [
                p["prediction"] for p in expected["predictions"]
            ]
            assert c.post("/v1/models/big/learn", json=_sample(6)).json()["step"] == 5
    finally:
        srv.stop()


@pytest.mark.cluster
def test_a_spec_too_big_to_train_is_refused_at_create(client, rds: redis.Redis, prefix: str) -> None:
    """The issue's example: a first step would ask for 34 GB. Refused before anything is
    stored, naming the size and the limit."""
    huge = regression_spec("huge", input_shape=[1, 1024, 1024], network={"kind": "cnn", "channels": [8192]})
    r = client.post("/v1/models", json=huge)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "GiB" in detail and "ONLINENORM_MAX_MODEL_BYTES" in detail and "32.0 GiB" in detail
    assert client.get("/v1/models/huge").status_code == 404
    assert not list(rds.scan_iter(match=f"{prefix}:model:*"))
    # State that would not fit one Redis value (512 MiB) is refused too.
    wide = regression_spec("wide", input_shape=[8192], network={"hidden": [8192, 8192]})
    r = client.post("/v1/models", json=wide)
    assert r.status_code == 422 and "one Redis value" in r.json()["detail"]


@pytest.mark.timeout(120)
def test_a_model_that_cannot_be_recovered_is_reported_not_a_ghost(
    redis_url: str, prefix: str, rds: redis.Redis, tmp_path: Path
) -> None:
    """Its snapshot is corrupt: GET says so (and why), learns and predictions answer 409,
    and DELETE frees the name."""
    env = _service_env(redis_url, prefix)
    srv = ProcessServer(env, tmp_path / "service.log").start()
    try:
        with srv.client() as c:
            create(c, regression_spec("r"))
            assert c.post("/v1/models/r/learn", json={"x": [1, 2, 3], "y": 1.0}).status_code == 200
    finally:
        srv.stop()
    rds.hset(keys.snapshot_key(prefix, "r"), "state", b"not a safetensors blob")
    srv = ProcessServer(env, tmp_path / "service.log").start()
    try:
        with srv.client() as c:
            info = c.get("/v1/models/r").json()
            assert info["status"] == "unrecoverable" and "snapshot cannot be loaded" in info["error"]
            assert [m["status"] for m in c.get("/v1/models").json()["models"]] == ["unrecoverable"]
            for path, body in (("learn", {"x": [1, 2, 3], "y": 1.0}), ("predict", {"x": [1, 2, 3]})):
                r = c.post(f"/v1/models/r/{path}", json=body)
                assert r.status_code == 409 and "DELETE it" in r.json()["detail"], r.text
            assert c.post("/v1/models", json=regression_spec("r")).status_code == 409
            assert c.delete("/v1/models/r").status_code == 204
            assert c.get("/v1/models/r").status_code == 404
            assert create(c, regression_spec("r"))["step"] == 0
    finally:
        srv.stop()
