"""Several real service processes on one Redis and key prefix, for the replica tests:
each ``python -m uvicorn service.app:app`` with its own ``ONLINENORM_REPLICA_ID``, a
short lease so failovers take a second or two, and its own log file."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from model.learner import OnlineLearner
from tests.service.reference import probe_predictions
from tests.service.servers import ProcessServer, wait_for
from tests.service.test_ordering import _service_env

LEASE_SECONDS = "1"


class Replicas:
    """``count`` replicas ``r0``, ``r1``, ... (started by :meth:`start`)."""

    def __init__(self, redis_url: str, prefix: str, tmp_path: Path, count: int, **env: str) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.tmp_path = tmp_path
        self.env = {
            "ONLINENORM_LEASE_SECONDS": LEASE_SECONDS,
            "ONLINENORM_REMOTE_TIMEOUT_SECONDS": "20",
            **env,
        }
        self.servers: list[ProcessServer] = [self._server(i) for i in range(count)]

    def _server(self, i: int, port: int | None = None) -> ProcessServer:
        env = _service_env(self.redis_url, self.prefix, ONLINENORM_REPLICA_ID=f"r{i}", **self.env)
        return ProcessServer(env, self.tmp_path / f"r{i}.log", port=port)

    def __enter__(self) -> Replicas:
        for server in self.servers:
            server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.resume()
            server.kill()

    def restart(self, i: int) -> ProcessServer:
        """SIGTERM replica ``i`` (it hands its models over), then start it again, same id and port."""
        old = self.servers[i]
        assert old.stop() in (0, -15), old.log()
        self.servers[i] = self._server(i, port=old.port).start()
        return self.servers[i]

    def urls(self, exclude: tuple[int, ...] = ()) -> list[str]:
        return [s.url for i, s in enumerate(self.servers) if i not in exclude]

    def owner(self, name: str, via: int = 0) -> str | None:
        return httpx.get(f"{self.servers[via].url}/v1/models/{name}", timeout=10).json()["owner"]

    def index(self, replica_id: str) -> int:
        return int(replica_id.removeprefix("r"))

    def wait_owned(self, names: list[str], timeout: float = 30, via: int = 0) -> dict[str, str]:
        """Wait until every model has an owner; returns them."""

        def owners() -> dict[str, str] | None:
            found = {n: self.owner(n, via) for n in names}
            return found if all(found.values()) else None

        return wait_for(owners, timeout, f"owners of {names}")

    def log(self, i: int) -> str:
        return (self.tmp_path / f"r{i}.log").read_text(errors="replace")


@dataclass
class Acks:
    """What the clients were answered: per model, the acknowledged samples by step."""

    by_model: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    answers: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)

    def add(self, name: str, sample: dict[str, Any], answer: dict[str, Any]) -> None:
        steps = self.by_model.setdefault(name, {})
        assert answer["step"] not in steps, f"step {answer['step']} of {name} acknowledged twice"
        steps[answer["step"]] = sample
        self.answers.setdefault(name, {})[answer["step"]] = answer

    def check_answers(self, name: str, learner_spec: dict[str, Any]) -> None:
        """Every answer, whichever replica gave it, is exactly what a learner fed the
        acknowledged samples in step order answers: the same step, loss and prediction."""
        ordered = self.check_contiguous(name)
        results = OnlineLearner(learner_spec).learn_many([s["x"] for s in ordered], [s["y"] for s in ordered])
        for result in results:
            got = self.answers[name][result.step]
            assert (got["loss"], got["prediction"]) == (result.loss, result.prediction), (name, result.step)

    def check_contiguous(self, name: str) -> list[dict[str, Any]]:
        """Every step from 1 to n acknowledged exactly once: the samples in step order."""
        steps = self.by_model.get(name, {})
        assert sorted(steps) == list(range(1, len(steps) + 1)), f"{name}: steps are not 1..{len(steps)}"
        return [steps[s] for s in sorted(steps)]


async def learn_with_retries(
    client: httpx.AsyncClient, urls: list[str], name: str, sample: dict[str, Any], deadline: float
) -> dict[str, Any]:
    """POST one keyed learn to any of ``urls``, retrying (same key, another replica) on
    whatever a failover can answer, until it is acknowledged: what a client behind a
    load balancer with the SDK's retries sees."""
    key = uuid.uuid4().hex
    last = ""
    while time.monotonic() < deadline:
        url = random.choice(urls)
        try:
            r = await client.post(
                f"{url}/v1/models/{name}/learn", json=sample, headers={"Idempotency-Key": key}
            )
        except httpx.TransportError as exc:
            last = repr(exc)
        else:
            if r.status_code == 200:
                return r.json()
            assert r.status_code in (503, 504), r.text  # refused before logging, or not yet applied
            last = r.text
        await asyncio.sleep(0.05)
    raise AssertionError(f"a learn of {name} was never acknowledged: {last}")


def reference(spec: dict[str, Any], ordered: list[dict[str, Any]]) -> OnlineLearner:
    learner = OnlineLearner(spec)
    learner.learn_many([s["x"] for s in ordered], [s["y"] for s in ordered])
    return learner


def converged_predictions(urls: list[str], name: str, probes: list[list[float]], timeout: float = 20) -> dict:
    """Once learns stop, every replica answers the same predictions (followers catch up
    within their staleness bound): the common answer."""

    def same() -> dict | None:
        answers = [
            httpx.post(
                f"{u}/v1/models/{name}/predict/batch",
                json={"samples": [{"x": x} for x in probes]},
                timeout=10,
            ).json()
            for u in urls
        ]
        return answers[0] if all(a == answers[0] for a in answers) else None

    return wait_for(same, timeout, f"replicas to agree on {name}", interval=0.2)


__all__ = [
    "Acks",
    "Replicas",
    "converged_predictions",
    "learn_with_retries",
    "probe_predictions",
    "reference",
]
