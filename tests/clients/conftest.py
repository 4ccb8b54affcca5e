"""The REAL service for end-to-end tests: ``python -m service`` in a subprocess on a
free port, against the Redis at ``REDIS_URL`` (else an embedded one), under a key
prefix of its own. Every model a test creates is deleted afterwards; nothing else in
Redis is touched (never FLUSHDB)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from clients import Client, NotFoundError

ROOT = Path(__file__).resolve().parents[2]
WRITE_KEY = "test-writer-" + uuid.uuid4().hex
READ_KEY = "test-reader-" + uuid.uuid4().hex


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class LiveService:
    url: str
    prefix: str
    redis_url: str | None


def service_env(port: int, prefix: str, data_dir: Path, redis_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONLINENORM_") and k != "REDIS_URL"}
    env.update(
        ONLINENORM_HOST="127.0.0.1",
        ONLINENORM_PORT=str(port),
        ONLINENORM_KEY_PREFIX=prefix,
        ONLINENORM_DATA_DIR=str(data_dir),
        ONLINENORM_DEVICE="cpu",
        ONLINENORM_LOG_LEVEL="warning",
    )
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


@pytest.fixture(scope="session")
def live_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    port = free_port()
    prefix = f"test-clients-{uuid.uuid4().hex[:12]}"
    redis_url = os.environ.get("REDIS_URL") or None
    tmp = tmp_path_factory.mktemp("service")
    env = service_env(port, prefix, tmp / "data", redis_url)
    env.update(ONLINENORM_API_KEYS=WRITE_KEY, ONLINENORM_READONLY_API_KEYS=READ_KEY)
    log = (tmp / "service.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        with Client(url, WRITE_KEY) as client:
            try:
                client.wait_until_ready(timeout=90)
            except Exception:
                proc.terminate()
                proc.wait(10)
                pytest.fail(f"the service did not start:\n{(tmp / 'service.log').read_text()[-3000:]}")
        yield LiveService(url, prefix, redis_url)
        with Client(url, WRITE_KEY) as client:  # whatever a failed test left behind
            for model in client.list_models():
                client.delete_model(model.name)
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    if redis_url:
        rds = redis.Redis.from_url(redis_url)
        leftover = list(rds.scan_iter(match=f"{prefix}:model:*")) + list(
            rds.scan_iter(match=f"{prefix}:catalog")
        )
        assert not leftover, f"model keys left behind: {leftover[:5]}"
        # The service-wide keys (the instance marker, the capped events stream) outlive models.
        service_keys = list(rds.scan_iter(match=f"{prefix}:*"))
        if service_keys:
            rds.delete(*service_keys)
        rds.close()


@pytest.fixture
def client(live_service: LiveService) -> Iterator[Client]:
    with Client(live_service.url, WRITE_KEY) as c:
        yield c


@pytest.fixture
def model_name(client: Client) -> Iterator[str]:
    """A fresh model name; the model (if the test made one) is deleted afterwards."""
    name = f"m-{uuid.uuid4().hex[:10]}"
    yield name
    with contextlib.suppress(NotFoundError):
        client.delete_model(name)
