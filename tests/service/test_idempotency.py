"""Idempotency-Key (idempotency.py, writer.py): a retried learn that was already
applied is answered with its original result and not applied again."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import redis

from service.store import keys
from tests.service.conftest import create, regression_spec, samples, spec
from tests.service.servers import ProcessServer, ThreadServer
from tests.service.test_ordering import _service_env


def _key(k: str) -> dict[str, str]:
    return {"Idempotency-Key": k}


@pytest.mark.cluster
def test_a_retry_gets_the_original_answer(client: httpx.Client, rds: redis.Redis, prefix: str) -> None:
    create(client, spec())
    s, other = samples(2)
    first = client.post("/v1/models/m/learn", json=s, headers=_key("abc-1"))
    assert first.status_code == 200 and "idempotent-replayed" not in first.headers
    client.post("/v1/models/m/learn", json=other)
    log_len = rds.xlen(keys.log_key(prefix, "m"))
    retry = client.post("/v1/models/m/learn", json=s, headers=_key("abc-1"))
    assert retry.status_code == 200
    assert retry.json() == first.json()
    assert retry.headers["idempotent-replayed"] == "true"
    assert client.get("/v1/models/m").json()["step"] == 2
    assert rds.xlen(keys.log_key(prefix, "m")) == log_len
    # Without the key, the same sample is a new sample.
    assert client.post("/v1/models/m/learn", json=s).json()["step"] == 3


@pytest.mark.cluster
def test_batch_retry_and_key_reuse(client: httpx.Client) -> None:
    create(client, spec())
    batch = {"samples": samples(4)}
    first = client.post("/v1/models/m/learn/batch", json=batch, headers=_key("batch-1"))
    retry = client.post("/v1/models/m/learn/batch", json=batch, headers=_key("batch-1"))
    assert retry.json() == first.json() and retry.headers["idempotent-replayed"] == "true"
    # The same key for other samples, or for the other endpoint, is refused.
    r = client.post("/v1/models/m/learn/batch", json={"samples": samples(3)}, headers=_key("batch-1"))
    assert r.status_code == 422 and "already used" in r.json()["detail"]
    r = client.post("/v1/models/m/learn", json=samples(1)[0], headers=_key("batch-1"))
    assert r.status_code == 422
    assert client.get("/v1/models/m").json()["step"] == 4


@pytest.mark.cluster
def test_keys_are_per_model(client: httpx.Client) -> None:
    create(client, spec("a"))
    create(client, spec("b"))
    s = samples(1)[0]
    assert client.post("/v1/models/a/learn", json=s, headers=_key("k")).json()["step"] == 1
    r = client.post("/v1/models/b/learn", json=s, headers=_key("k"))
    assert r.status_code == 200 and "idempotent-replayed" not in r.headers


@pytest.mark.cluster
def test_concurrent_duplicates_are_applied_once(server: ThreadServer) -> None:
    with server.client() as c:
        create(c, spec())
    s = samples(1)[0]

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            return await asyncio.gather(
                *(c.post("/v1/models/m/learn", json=s, headers=_key("dup")) for _ in range(8))
            )

    answers = asyncio.run(fire())
    assert all(r.status_code == 200 for r in answers)
    assert len({r.content for r in answers}) == 1
    with server.client() as c:
        assert c.get("/v1/models/m").json()["step"] == 1


@pytest.mark.cluster
def test_a_rolled_back_request_is_not_retried_into_the_model(client: httpx.Client) -> None:
    create(client, regression_spec("m", optimizer={"kind": "sgd", "lr": 0.01, "clip_grad_norm": None}))
    boom = {"x": [1e30, 1e30, 1e30], "y": 1e30}
    first = client.post("/v1/models/m/learn", json=boom, headers=_key("boom"))
    retry = client.post("/v1/models/m/learn", json=boom, headers=_key("boom"))
    assert first.status_code == retry.status_code == 422
    assert first.json() == retry.json()
    assert client.get("/v1/models/m/metrics").json()["samples_seen"] == 0


@pytest.mark.cluster
def test_keys_are_remembered_for_a_time_window(make_settings) -> None:
    """Within IDEMPOTENCY_SECONDS (by the log's clock) a key is a retry; after it, a new request."""
    with ThreadServer(make_settings(IDEMPOTENCY_SECONDS=1.0)) as srv, srv.client() as c:
        create(c, spec())
        first, later = samples(2)
        assert c.post("/v1/models/m/learn", json=first, headers=_key("k1")).json()["step"] == 1
        assert c.post("/v1/models/m/learn", json=first, headers=_key("k1")).headers["idempotent-replayed"]
        time.sleep(1.3)
        c.post("/v1/models/m/learn", json=later, headers=_key("k2"))  # moves the records' clock on
        forgotten = c.post("/v1/models/m/learn", json=first, headers=_key("k1"))
        assert "idempotent-replayed" not in forgotten.headers
        assert forgotten.json()["step"] == 3


@pytest.mark.cluster
def test_the_byte_bound_forgets_the_oldest_first(make_settings) -> None:
    """Over IDEMPOTENCY_MAX_BYTES the oldest records go before their window ends (counted)."""
    with ThreadServer(make_settings(IDEMPOTENCY_MAX_BYTES=600)) as srv, srv.client() as c:
        create(c, spec())
        sent = samples(6)
        for i, s in enumerate(sent):
            c.post("/v1/models/m/learn", json=s, headers=_key(f"k{i}"))
        assert c.post("/v1/models/m/learn", json=sent[5], headers=_key("k5")).headers["idempotent-replayed"]
        forgotten = c.post("/v1/models/m/learn", json=sent[0], headers=_key("k0"))
        assert "idempotent-replayed" not in forgotten.headers and forgotten.json()["step"] == 7
        evicted = [
            line
            for line in c.get("/metrics").text.splitlines()
            if line.startswith("onlinenorm_idempotency_evicted_total")
        ]
        assert evicted and float(evicted[0].split()[-1]) >= 1


@pytest.mark.timeout(240)
def test_a_retry_after_ten_thousand_other_keyed_requests(
    redis_url: str, prefix: str, rds: redis.Redis, tmp_path: Path
) -> None:
    """Keys are remembered by time, not by count: 10,000 keyed requests later (and a
    restart), a retry of the first is still answered from its record, not applied again."""
    env = _service_env(redis_url, prefix, ONLINENORM_SNAPSHOT_EVERY_STEPS="3000")
    srv = ProcessServer(env, tmp_path / "service.log").start()
    try:
        with srv.client() as c:
            create(c, regression_spec("m", network={"hidden": [4], "skip": False}))
            first = c.post("/v1/models/m/learn", json={"x": [1.0, 2.0, 3.0], "y": 0.5}, headers=_key("first"))
            assert first.status_code == 200

        async def flood() -> None:
            limits = httpx.Limits(max_connections=16)
            async with httpx.AsyncClient(base_url=srv.url, timeout=60, limits=limits) as ac:

                async def poster(k: int) -> None:
                    for i in range(k, 10_000, 16):
                        body = {"x": [float(i), 0.0, 1.0], "y": 0.0}
                        r = await ac.post("/v1/models/m/learn", json=body, headers=_key(f"other-{i}"))
                        assert r.status_code == 200, r.text

                await asyncio.gather(*(poster(k) for k in range(16)))

        asyncio.run(flood())
        with srv.client() as c:
            assert c.get("/v1/models/m").json()["step"] == 10_001
            retry = c.post("/v1/models/m/learn", json={"x": [1.0, 2.0, 3.0], "y": 0.5}, headers=_key("first"))
            assert retry.headers["idempotent-replayed"] == "true" and retry.json() == first.json()
        srv.stop()
        # ... and after a restart: the records went out with the snapshots.
        srv = ProcessServer(env, tmp_path / "service.log").start()
        with srv.client() as c:
            retry = c.post("/v1/models/m/learn", json={"x": [1.0, 2.0, 3.0], "y": 0.5}, headers=_key("first"))
            assert retry.headers["idempotent-replayed"] == "true" and retry.json() == first.json()
            assert c.get("/v1/models/m").json()["step"] == 10_001
    finally:
        srv.stop()
    assert rds.hlen(keys.idempotency_key(prefix, "m")) == 10_001
