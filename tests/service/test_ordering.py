"""One writer per model (writer.py): 32 concurrent clients against a real uvicorn
subprocess; every request is applied exactly once, one at a time, and the model equals
a sequential run in the order the server applied (= logged) them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.service.conftest import PROBES, create, samples, spec
from tests.service.reference import logged_requests, probe_predictions, reference_learner
from tests.service.servers import ProcessServer

CLIENTS = 32
SINGLES = 6
BATCH = 3


def _service_env(redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "ONLINENORM_KEY_PREFIX": prefix,
        "ONLINENORM_DEVICE": "cpu",
        "ONLINENORM_SNAPSHOT_EVERY_STEPS": "100000",
        "ONLINENORM_SNAPSHOT_EVERY_SECONDS": "3600",
        "ONLINENORM_LOG_LEVEL": "warning",
        **extra,
    }


async def _post_all(url: str) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
    """Each client posts singles and one batch, concurrently with the others."""
    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:

        async def poster(k: int) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
            mine = samples(SINGLES + BATCH, seed=k + 1)
            out = []
            for j in range(SINGLES):
                r = await c.post("/v1/models/m/learn", json=mine[j])
                assert r.status_code == 200, r.text
                out.append(([mine[j]], r.json()))
                if j == SINGLES // 2:
                    batch = mine[SINGLES:]
                    r = await c.post("/v1/models/m/learn/batch", json={"samples": batch})
                    assert r.status_code == 200, r.text
                    out.append((batch, r.json()))
            return out

        per_client = await asyncio.gather(*(poster(k) for k in range(CLIENTS)))
    return [item for items in per_client for item in items]


@pytest.mark.timeout(180)
def test_concurrent_clients_are_serialized_in_arrival_order(
    redis_url: str, prefix: str, rds: redis.Redis, tmp_path: Path
) -> None:
    srv = ProcessServer(_service_env(redis_url, prefix), tmp_path / "service.log").start()
    try:
        with srv.client() as c:
            create(c, spec())
        answered = asyncio.run(_post_all(srv.url))
        with srv.client() as c:
            metrics = c.get("/v1/models/m/metrics").json()
            predicted = c.post(
                "/v1/models/m/predict/batch", json={"samples": [{"x": x} for x in PROBES]}
            ).json()
    finally:
        srv.kill()
    total = CLIENTS * (SINGLES + BATCH)
    # None lost, none applied twice: the steps are exactly 1..total.
    steps = []
    for _, body in answered:
        steps.extend([r["step"] for r in body["results"]] if "results" in body else [body["step"]])
    assert sorted(steps) == list(range(1, total + 1))
    assert metrics["samples_seen"] == metrics["step"] == total
    # A batch is applied as one uninterrupted run.
    for sent, body in answered:
        if "results" in body:
            first = body["results"][0]["step"]
            assert [r["step"] for r in body["results"]] == list(range(first, first + len(sent)))
    # The log holds every request once; its order is the order of the steps.
    flat = [s for request in logged_requests(rds, prefix, "m") for s in request]
    assert len(flat) == total
    for sent, body in answered:
        results = body.get("results", [body])
        for s, r in zip(sent, results, strict=True):
            assert flat[r["step"] - 1] == [s["x"], s["y"]]
    # A sequential run in that order reproduces every answer and the final model.
    ref, ref_results = reference_learner(rds, prefix, "m")
    by_step = {r.step: r for r in ref_results}
    for _, body in answered:
        for r in body.get("results", [body]):
            expected = by_step[r["step"]]
            assert (r["loss"], r["prediction"]) == (expected.loss, expected.prediction)
    assert predicted == probe_predictions(ref, PROBES)
    expected_metrics = ref.metrics_dict()
    assert {k: metrics[k] for k in expected_metrics} == expected_metrics
