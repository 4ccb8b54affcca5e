"""Crash recovery with a real ``kill -9`` of a real uvicorn subprocess (registry.py,
store/log.py, store/snapshots.py): acknowledged samples are never lost, and a model
comes back from its snapshot plus the log after it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from model.learner import OnlineLearner
from service.store import keys
from tests.service.conftest import PROBES, create, samples, spec
from tests.service.reference import (
    logged_requests,
    probe_predictions,
    reference_learner,
    without_ecm_diagnostics,
)
from tests.service.servers import ProcessServer, ThreadServer, wait_for
from tests.service.test_ordering import _service_env

pytestmark = pytest.mark.cluster  # also against a real Redis Cluster

PREDICT_PROBES = {"samples": [{"x": x} for x in PROBES]}


def _regression(sent: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Targets far from 0, which the default regression spec standardizes (target_norm)."""
    return [{"x": s["x"], "y": 150.0 + 12.5 * s["y"] + 0.1 * s["x"][0]} for s in sent]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_kill_between_requests_loses_nothing(
    redis_url: str, prefix: str, rds: redis.Redis, tmp_path: Path, task: str
) -> None:
    """Snapshots every 7 steps: recovery = latest snapshot + replay of the log after it.
    The regression model's running target statistics come back with it."""
    env = _service_env(redis_url, prefix, ONLINENORM_SNAPSHOT_EVERY_STEPS="7")
    body = spec() if task == "classification" else spec(task="regression", num_classes=None)
    sent = samples(40) if task == "classification" else _regression(samples(40))
    srv = ProcessServer(env, tmp_path / "service.log").start()
    try:
        with srv.client() as c:
            create(c, body)
            for s in sent[:30]:
                assert c.post("/v1/models/m/learn", json=s).status_code == 200
            assert c.post("/v1/models/m/learn/batch", json={"samples": sent[30:39]}).status_code == 200
            keyed = c.post("/v1/models/m/learn", json=sent[39], headers={"Idempotency-Key": "req-40"})
            assert keyed.status_code == 200 and keyed.json()["step"] == 40
            before = c.post("/v1/models/m/predict/batch", json=PREDICT_PROBES).json()
            stats_before = without_ecm_diagnostics(c.get("/v1/models/m/stats").json())
    finally:
        srv.kill()
    snapshot_step = int(rds.hget(keys.snapshot_key(prefix, "m"), "step") or 0)
    assert 0 < snapshot_step < 40, "the test needs a snapshot and a log after it"
    assert rds.xlen(keys.log_key(prefix, "m")) > 0

    srv = ProcessServer(env, tmp_path / "service.log").start()
    try:
        with srv.client() as c:
            metrics = c.get("/v1/models/m/metrics").json()
            assert metrics["samples_seen"] == metrics["step"] == 40
            assert c.get("/v1/models/m").json()["step"] == 40
            after = c.post("/v1/models/m/predict/batch", json=PREDICT_PROBES).json()
            assert after == before
            assert without_ecm_diagnostics(c.get("/v1/models/m/stats").json()) == stats_before
            # The same as a service that never crashed: a learner fed the same samples.
            ref = OnlineLearner(body)
            ref.learn_many([s["x"] for s in sent], [s["y"] for s in sent])
            assert after == probe_predictions(ref, PROBES)
            assert {k: metrics[k] for k in ref.metrics_dict()} == ref.metrics_dict()
            # The Idempotency-Key record survived too: a retry is not applied twice.
            retry = c.post("/v1/models/m/learn", json=sent[39], headers={"Idempotency-Key": "req-40"})
            assert retry.status_code == 200 and retry.json() == keyed.json()
            assert retry.headers["idempotent-replayed"] == "true"
            assert c.get("/v1/models/m").json()["step"] == 40
    finally:
        srv.stop()


async def _learn_until_killed(srv: ProcessServer, kill_after: int, clients: int) -> tuple[list[dict], int]:
    """Clients post learns in a loop; kill -9 the service once ``kill_after`` are acked.
    Returns the acknowledged answers (with their samples) and how many requests failed."""
    acked: list[dict[str, Any]] = []
    failed = 0
    killed = asyncio.Event()
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=srv.url, timeout=30, limits=limits) as c:

        async def poster(k: int) -> None:
            nonlocal failed
            for s in samples(10_000, seed=k + 1):
                if killed.is_set():
                    return
                try:
                    r = await c.post("/v1/models/m/learn", json=s)
                except httpx.TransportError:
                    failed += 1
                    return
                assert r.status_code == 200, r.text
                acked.append({"sample": s, **r.json()})
                if len(acked) >= kill_after and not killed.is_set():
                    killed.set()
                    srv.kill()

        await asyncio.gather(*(poster(k) for k in range(clients)))
    return acked, failed


@pytest.mark.timeout(180)
def test_kill_with_requests_in_flight(redis_url: str, prefix: str, rds: redis.Redis, tmp_path: Path) -> None:
    env = _service_env(redis_url, prefix)
    srv = ProcessServer(env, tmp_path / "service.log").start()
    try:
        with srv.client() as c:
            create(c, spec())
        acked, in_flight = asyncio.run(_learn_until_killed(srv, kill_after=60, clients=16))
    finally:
        srv.kill()
    logged = [s for request in logged_requests(rds, prefix, "m") for s in request]
    assert len(acked) <= len(logged) <= len(acked) + in_flight
    for a in acked:  # every acknowledged sample is in the log, at the step it was answered with
        assert logged[a["step"] - 1] == [a["sample"]["x"], a["sample"]["y"]]
    ref, _ = reference_learner(rds, prefix, "m")

    srv = ProcessServer(env, tmp_path / "service.log").start()
    try:
        with srv.client() as c:
            metrics = c.get("/v1/models/m/metrics").json()
            assert metrics["samples_seen"] == metrics["step"] == len(logged)
            assert c.post("/v1/models/m/predict/batch", json=PREDICT_PROBES).json() == probe_predictions(
                ref, PROBES
            )
            assert {k: metrics[k] for k in ref.metrics_dict()} == ref.metrics_dict()
            # ... and it goes on learning.
            assert c.post("/v1/models/m/learn", json=samples(1, seed=99)[0]).json()["step"] == len(logged) + 1
    finally:
        srv.stop()


@pytest.mark.timeout(120)
def test_graceful_stop_snapshots_and_trims_the_log(
    redis_url: str, prefix: str, rds: redis.Redis, tmp_path: Path
) -> None:
    env = _service_env(redis_url, prefix)
    srv = ProcessServer(env, tmp_path / "service.log").start()
    try:
        with srv.client() as c:
            create(c, spec())
            c.post("/v1/models/m/learn/batch", json={"samples": samples(5)})
            assert rds.xlen(keys.log_key(prefix, "m")) == 1
    finally:
        assert srv.stop() in (0, -15)
    assert "Application shutdown complete" in srv.log()
    snap = rds.hgetall(keys.snapshot_key(prefix, "m"))
    assert int(snap[b"step"]) == 5
    assert rds.xlen(keys.log_key(prefix, "m")) == 0
    srv = ProcessServer(env, tmp_path / "service.log").start()
    try:
        with srv.client() as c:
            assert c.get("/v1/models/m").json()["step"] == 5
    finally:
        srv.stop()


def test_an_idle_model_is_snapshotted_on_time(make_settings, rds: redis.Redis, prefix: str) -> None:
    """SNAPSHOT_EVERY_SECONDS applies when no learn comes to trigger it; the log is trimmed."""
    with ThreadServer(make_settings(SNAPSHOT_EVERY_SECONDS=0.3)) as srv, srv.client() as c:
        create(c, spec())
        c.post("/v1/models/m/learn/batch", json={"samples": samples(3)})
        c.post("/v1/models/m/learn", json=samples(1, seed=5)[0])
        assert rds.xlen(keys.log_key(prefix, "m")) == 2
        wait_for(lambda: rds.hget(keys.snapshot_key(prefix, "m"), "step") == b"4", 10, "a timed snapshot")
        assert rds.xlen(keys.log_key(prefix, "m")) == 0
        snap = rds.hgetall(keys.snapshot_key(prefix, "m"))
        assert float(snap[b"snapshot_at"]) >= float(snap[b"updated_at"]) >= float(snap[b"created_at"])
