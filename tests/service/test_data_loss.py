"""Redis losing data under a running service (cluster/replica.py): the prefix flushed,
or Redis restarted without persistence. The owner notices on its next fenced write,
re-persists what it holds in memory (loudly: /readyz, /metrics, the log), and no
acknowledged learn is lost: a restart afterwards comes back exactly."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.service.conftest import PROBES, create, delete_prefix, samples, spec
from tests.service.reference import probe_predictions
from tests.service.replicas import reference
from tests.service.servers import ProcessServer, RedisProcess, ThreadServer
from tests.service.test_ordering import _service_env


def _learn_acked(c: httpx.Client, sample: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
    """A keyed learn, retried on 503 (Redis away, or the model being restored) until acknowledged."""
    key = uuid.uuid4().hex
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = c.post("/v1/models/m/learn", json=sample, headers={"Idempotency-Key": key})
        except httpx.TransportError:
            r = None
        if r is not None and r.status_code == 200:
            return r.json()
        assert r is None or r.status_code == 503, r.text
        assert time.monotonic() < deadline, "never acknowledged"
        time.sleep(0.1)


def _check_loss_reported(c: httpx.Client) -> None:
    ready = c.get("/readyz").json()
    assert ready["data_loss"]["detected"] >= 1 and "m" in ready["data_loss"]["repersisted_models"]
    text = c.get("/metrics").text
    assert re.search(r"^onlinenorm_redis_data_loss_total [1-9]", text, re.M), text
    assert re.search(r"^onlinenorm_models_repersisted_total [1-9]", text, re.M)


def _steps(acked: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[dict[str, Any]]:
    assert [a["step"] for _, a in acked] == list(range(1, len(acked) + 1))
    return [s for s, _ in acked]


@pytest.mark.timeout(180)
def test_a_flush_of_the_prefix_loses_no_acknowledged_learn(
    redis_url: str, prefix: str, rds: redis.Redis, tmp_path: Path
) -> None:
    env = _service_env(redis_url, prefix)
    srv = ProcessServer(env, tmp_path / "service.log").start()
    acked: list[tuple[dict[str, Any], dict[str, Any]]] = []
    try:
        with srv.client() as c:
            create(c, spec())
            for s in samples(15):
                acked.append((s, _learn_acked(c, s)))
            delete_prefix(rds, prefix)  # every key of the service: catalog, model, marker
            for s in samples(15, seed=2):
                acked.append((s, _learn_acked(c, s)))
            _check_loss_reported(c)
            assert c.get("/v1/models/m").json()["step"] == 30
    finally:
        srv.stop()
    assert "REDIS LOST DATA" in srv.log()
    srv = ProcessServer(env, tmp_path / "service.log").start()
    try:
        with srv.client() as c:
            got = c.post("/v1/models/m/predict/batch", json={"samples": [{"x": x} for x in PROBES]}).json()
            assert got == probe_predictions(reference(spec(), _steps(acked)), PROBES)
    finally:
        srv.stop()


@pytest.mark.timeout(180)
def test_redis_restarted_without_persistence_loses_no_acknowledged_learn(prefix: str, tmp_path: Path) -> None:
    own = RedisProcess(tmp_path, persist=False).start()
    env = _service_env(own.url, prefix)
    srv = ProcessServer(env, tmp_path / "service.log").start()
    acked: list[tuple[dict[str, Any], dict[str, Any]]] = []
    try:
        with srv.client() as c:
            create(c, spec())
            for s in samples(10):
                acked.append((s, _learn_acked(c, s)))
            own.stop()
            own.start()  # empty: no append-only file
            assert redis.Redis.from_url(own.url).dbsize() == 0
            for s in samples(10, seed=2):
                acked.append((s, _learn_acked(c, s)))
            _check_loss_reported(c)
        srv.stop()
        srv = ProcessServer(env, tmp_path / "service.log").start()
        with srv.client() as c:
            got = c.post("/v1/models/m/predict/batch", json={"samples": [{"x": x} for x in PROBES]}).json()
            assert got == probe_predictions(reference(spec(), _steps(acked)), PROBES)
    finally:
        srv.stop()
        own.stop()


@pytest.mark.timeout(120)
def test_a_claim_racing_the_repersist_takes_nothing(
    make_settings: Any, rds: redis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The placement loop sees a model listed (its catalog entry just written back) with
    no writer yet: it must not claim it while the re-persist runs. Such a claim stole
    the re-persist's lease and started from the snapshot without the idempotency
    records, so the retry of a learn acknowledged before the loss was applied again."""
    from service.store import catalog

    create_model = catalog.create_model
    raced: list[bool] = []

    async def create_then_race(*args: Any, **kwargs: Any) -> str | None:
        existing = await create_model(*args, **kwargs)
        if armed and not raced:  # the placement loop's turn, exactly in the window
            raced.append(True)
            handle = next(h for h in srv.registry.handles() if h.name == args[2])
            await srv.app.state.replica._claim(handle)
        return existing

    monkeypatch.setattr(catalog, "create_model", create_then_race)
    armed = False
    with ThreadServer(make_settings()) as srv, srv.client() as c:
        create(c, spec())
        before = samples(5)
        keys_used = [uuid.uuid4().hex for _ in before]
        for i, (s, key) in enumerate(zip(before, keys_used, strict=True), start=1):
            assert c.post("/v1/models/m/learn", json=s, headers={"Idempotency-Key": key}).json()["step"] == i
        armed = True
        delete_prefix(rds, prefix)
        after = samples(5, seed=2)
        acked = [(s, _learn_acked(c, s)) for s in after[:1]]
        assert raced, "the re-persist did not run"
        assert acked[0][1]["step"] == 6
        retry = c.post("/v1/models/m/learn", json=before[-1], headers={"Idempotency-Key": keys_used[-1]})
        assert retry.status_code == 200 and retry.headers.get("idempotent-replayed") == "true", retry.text
        assert retry.json()["step"] == 5  # the original answer, not a second step
        for s in after[1:]:
            acked.append((s, _learn_acked(c, s)))
        assert [a["step"] for _, a in acked] == list(range(6, 11))
        assert "m" in c.get("/readyz").json()["data_loss"]["repersisted_models"]
        got = c.post("/v1/models/m/predict/batch", json={"samples": [{"x": x} for x in PROBES]}).json()
    assert got == probe_predictions(reference(spec(), before + after), PROBES)
