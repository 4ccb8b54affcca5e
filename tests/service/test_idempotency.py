"""Idempotency-Key (idempotency.py, writer.py): a retried learn that was already
applied is answered with its original result and not applied again."""

from __future__ import annotations

import asyncio

import httpx
import redis

from service.store import keys
from tests.service.conftest import create, regression_spec, samples, spec
from tests.service.servers import ThreadServer


def _key(k: str) -> dict[str, str]:
    return {"Idempotency-Key": k}


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


def test_keys_are_per_model(client: httpx.Client) -> None:
    create(client, spec("a"))
    create(client, spec("b"))
    s = samples(1)[0]
    assert client.post("/v1/models/a/learn", json=s, headers=_key("k")).json()["step"] == 1
    r = client.post("/v1/models/b/learn", json=s, headers=_key("k"))
    assert r.status_code == 200 and "idempotent-replayed" not in r.headers


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


def test_a_rolled_back_request_is_not_retried_into_the_model(client: httpx.Client) -> None:
    create(client, regression_spec("m", optimizer={"kind": "sgd", "lr": 0.01, "clip_grad_norm": None}))
    boom = {"x": [1e30, 1e30, 1e30], "y": 1e30}
    first = client.post("/v1/models/m/learn", json=boom, headers=_key("boom"))
    retry = client.post("/v1/models/m/learn", json=boom, headers=_key("boom"))
    assert first.status_code == retry.status_code == 422
    assert first.json() == retry.json()
    assert client.get("/v1/models/m/metrics").json()["samples_seen"] == 0


def test_only_the_most_recent_keys_are_remembered(make_settings) -> None:
    with ThreadServer(make_settings(IDEMPOTENCY_KEYS=2)) as srv, srv.client() as c:
        create(c, spec())
        sent = samples(3)
        for i, s in enumerate(sent):
            c.post("/v1/models/m/learn", json=s, headers=_key(f"k{i}"))
        assert c.post("/v1/models/m/learn", json=sent[2], headers=_key("k2")).headers["idempotent-replayed"]
        forgotten = c.post("/v1/models/m/learn", json=sent[0], headers=_key("k0"))
        assert "idempotent-replayed" not in forgotten.headers
        assert forgotten.json()["step"] == 4
