"""The embedded default (embedded.py, __main__.py): with REDIS_URL unset, ``python -m
service`` starts its own redis-server persisting under the data dir, survives its own
``kill -9`` (the server it left running is re-attached), and stops it at shutdown."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import psutil
import pytest

from tests.service.conftest import create, samples, spec
from tests.service.servers import ProcessServer, wait_for


def _embedded_pid(data_dir: Path) -> int:
    registry = json.loads((data_dir / "redis.db.settings").read_text())
    return int(Path(registry["pidfile"]).read_text().strip())


@pytest.mark.timeout(180)
def test_embedded_redis_lifecycle(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {
        "ONLINENORM_DATA_DIR": str(data),
        "ONLINENORM_KEY_PREFIX": f"test-{uuid.uuid4().hex}",
        "ONLINENORM_DEVICE": "cpu",
        "ONLINENORM_LOG_LEVEL": "info",
    }
    assert "REDIS_URL" not in env
    srv = ProcessServer(env, tmp_path / "service.log", python_m_service=True).start()
    pid = _embedded_pid(data)
    try:
        with srv.client() as c:
            create(c, spec())
            assert c.post("/v1/models/m/learn/batch", json={"samples": samples(5)}).status_code == 200
    finally:
        srv.kill()
    assert psutil.pid_exists(pid), "the embedded Redis outlives a kill -9 of the service"

    srv = ProcessServer(env, tmp_path / "service.log", python_m_service=True).start()
    try:
        assert _embedded_pid(data) == pid  # re-attached, not a second server
        with srv.client() as c:
            assert c.get("/v1/models/m").json()["step"] == 5
            assert c.post("/v1/models/m/learn", json=samples(1, seed=7)[0]).json()["step"] == 6
    finally:
        srv.stop()
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 30,
             "the embedded Redis to stop")  # fmt: skip
    assert (data / "appendonly.aof").exists()

    srv = ProcessServer(env, tmp_path / "service.log", python_m_service=True).start()
    last = _embedded_pid(data)
    try:
        with srv.client() as c:
            assert c.get("/v1/models/m").json()["step"] == 6
    finally:
        srv.stop()
    wait_for(lambda: not psutil.pid_exists(last), 30, "the embedded Redis to stop")
    assert "OPEN" in srv.log()  # no keys: the start-up warning
    assert not any(p.info["name"] == "redis-server" and str(data) in " ".join(p.info["cmdline"] or [])
                   for p in psutil.process_iter(["name", "cmdline"]))  # fmt: skip
    os.sync()


@pytest.mark.timeout(120)
def test_a_second_process_on_the_embedded_redis_is_refused(tmp_path: Path) -> None:
    """The embedded server belongs to one process: a second one on the same data dir (a
    second `uvicorn --workers` process, say) fails at start with a message that says to
    set REDIS_URL, instead of sharing, and later stopping, the first one's server."""
    data = tmp_path / "data"
    env = {"ONLINENORM_DATA_DIR": str(data), "ONLINENORM_DEVICE": "cpu", "ONLINENORM_KEY_PREFIX": "one"}
    first = ProcessServer(env, tmp_path / "first.log", python_m_service=True).start()
    try:
        second = ProcessServer(env, tmp_path / "second.log", python_m_service=True)
        with pytest.raises(AssertionError, match="set REDIS_URL"):
            second.start(timeout=60)
        with first.client() as c:
            assert c.get("/readyz").status_code == 200
    finally:
        first.stop()
