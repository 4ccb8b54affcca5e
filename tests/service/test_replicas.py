"""Several replicas on one prefix (cluster/, writer.py, remote.py, follower.py), as real
processes against a real Redis: every acknowledged learn is applied exactly once, in
one order, whichever replica received it, through kill -9, SIGSTOP past the lease and
a rolling restart."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from clients import Client
from service.store import keys
from tests.service.conftest import PROBES, create, samples, spec
from tests.service.proxy import NginxProcess, nginx_available
from tests.service.replicas import (
    Acks,
    Replicas,
    converged_predictions,
    learn_with_retries,
    probe_predictions,
    reference,
)
from tests.service.servers import ProcessServer, wait_for
from tests.service.test_ordering import _service_env

MODELS = ["m0", "m1", "m2"]


def _replica_ids(url: str) -> list[str]:
    return [r["id"] for r in httpx.get(f"{url}/v1/replicas", timeout=10).json()["replicas"]]


async def _learn_everywhere(
    urls: list[str], names: list[str], per_client: int, clients: int, seed: int = 1, timeout: float = 90
) -> Acks:
    """``clients`` concurrent clients, each posting ``per_client`` learns to models and
    replicas at random (retried with their key until acknowledged)."""
    acks = Acks()
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=clients * 2)) as client:

        async def poster(k: int) -> None:
            for i, s in enumerate(samples(per_client, seed=seed * 100 + k)):
                name = names[(k + i) % len(names)]
                acks.add(name, s, await learn_with_retries(client, urls, name, s, deadline))

        await asyncio.gather(*(poster(k) for k in range(clients)))
    return acks


@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_three_replicas_take_learns_at_once(redis_url: str, prefix: str, tmp_path: Path) -> None:
    with Replicas(redis_url, prefix, tmp_path, 3) as reps:
        with httpx.Client(base_url=reps.servers[0].url, timeout=30) as c:
            for name in MODELS:
                create(c, spec(name))
        assert set(_replica_ids(reps.servers[0].url)) == {"r0", "r1", "r2"}
        owners = reps.wait_owned(MODELS)
        # Models spread: with three of each, every replica owns one.
        wait_for(lambda: len(set(reps.wait_owned(MODELS).values())) == 3, 30, "models spread over replicas")
        acks = asyncio.run(_learn_everywhere(reps.urls(), MODELS, per_client=40, clients=6))
        for name in MODELS:
            ordered = acks.check_contiguous(name)  # every acknowledged step unique, none missing
            acks.check_answers(name, spec(name))  # and every body exactly the owner's
            expected = probe_predictions(reference(spec(name), ordered), PROBES)
            assert converged_predictions(reps.urls(), name, PROBES) == expected
            for url in reps.urls():
                metrics = httpx.get(f"{url}/v1/models/{name}/metrics", timeout=10).json()
                assert metrics["samples_seen"] == metrics["step"] == len(ordered)
        listed = {
            r["id"]: set(r["models"])
            for r in httpx.get(f"{reps.servers[1].url}/v1/replicas").json()["replicas"]
        }
        assert {m for ms in listed.values() for m in ms} == set(MODELS)
        for name, owner in reps.wait_owned(MODELS, via=2).items():
            assert name in listed[owner]
        assert owners  # (the first owners were found before any learn)


@pytest.mark.timeout(240)
def test_kill_9_of_the_owner_under_load(redis_url: str, prefix: str, tmp_path: Path) -> None:
    """The owner dies mid-stream: another replica takes the model over within about a
    lease, and every request is acknowledged exactly once (clients retry with their key)."""
    with Replicas(redis_url, prefix, tmp_path, 3) as reps:
        with httpx.Client(base_url=reps.servers[0].url, timeout=30) as c:
            create(c, spec("m"))
        victim = reps.index(reps.wait_owned(["m"])["m"])
        survivors = reps.urls(exclude=(victim,))
        acks = Acks()
        killed_at: list[float] = []

        async def run() -> None:
            deadline = time.monotonic() + 120
            async with httpx.AsyncClient(timeout=30) as client:

                async def poster(k: int) -> None:
                    for s in samples(60, seed=k + 1):
                        acks.add("m", s, await learn_with_retries(client, survivors, "m", s, deadline))
                        if sum(len(v) for v in acks.by_model.values()) >= 60 and not killed_at:
                            killed_at.append(time.monotonic())
                            reps.servers[victim].kill()

                await asyncio.gather(*(poster(k) for k in range(4)))

        asyncio.run(run())
        assert killed_at, "the owner was never killed"
        ordered = acks.check_contiguous("m")
        assert len(ordered) == 240
        acks.check_answers("m", spec("m"))  # answers given through a failover are exact too
        new_owner = reps.wait_owned(["m"], via=(victim + 1) % 3)["m"]
        assert new_owner != f"r{victim}"
        assert converged_predictions(survivors, "m", PROBES) == probe_predictions(
            reference(spec("m"), ordered), PROBES
        )


@pytest.mark.timeout(240)
def test_an_owner_paused_past_its_lease_is_fenced_and_steps_down(
    redis_url: str, prefix: str, tmp_path: Path, rds: redis.Redis
) -> None:
    """SIGSTOP the owner past its lease while others learn; a learn it received while
    stopped is handled when it wakes. Redis refuses its stale token, it steps down, and
    nothing is lost or applied twice."""
    with Replicas(redis_url, prefix, tmp_path, 3) as reps:
        with httpx.Client(base_url=reps.servers[0].url, timeout=30) as c:
            create(c, spec("m"))
        paused = reps.index(reps.wait_owned(["m"])["m"])
        others = reps.urls(exclude=(paused,))
        acks = asyncio.run(_learn_everywhere(reps.urls(), ["m"], per_client=10, clients=3, seed=1))
        stale_epoch = int(rds.hget(keys.lease_key(prefix, "m"), "token").rsplit(b":", 1)[1])
        reps.servers[paused].pause()
        late: dict[str, Any] = {}
        sample = samples(1, seed=999)[0]

        def post_to_the_paused_owner() -> None:
            r = httpx.post(f"{reps.servers[paused].url}/v1/models/m/learn", json=sample, timeout=60)
            late["status"], late["body"] = r.status_code, r.json()

        thread = threading.Thread(target=post_to_the_paused_owner)
        thread.start()
        more = asyncio.run(_learn_everywhere(others, ["m"], per_client=10, clients=3, seed=2))
        new_owner = reps.wait_owned(["m"], via=(paused + 1) % 3)["m"]
        assert new_owner != f"r{paused}"  # it took over while the owner slept
        reps.servers[paused].resume()
        thread.join(timeout=60)
        assert late.get("status") == 200, late  # answered through the new owner
        for step, s in more.by_model["m"].items():
            acks.add("m", s, {"step": step})
        acks.add("m", sample, late["body"])
        ordered = acks.check_contiguous("m")
        assert len(ordered) == 61
        # Its stale token was refused (it counted the lease as taken) and it stepped down;
        # whoever owns the model now (it may be placed back on it) holds a newer token.
        metrics = httpx.get(f"{reps.servers[paused].url}/metrics", timeout=10).text
        assert re.search(r'^onlinenorm_lease_losses_total[{]reason="taken"[}] [1-9]', metrics, re.M), metrics
        token = rds.hget(keys.lease_key(prefix, "m"), "token")
        assert token is not None and int(token.rsplit(b":", 1)[1]) > stale_epoch
        expected = probe_predictions(reference(spec("m"), ordered), PROBES)
        assert converged_predictions(reps.urls(), "m", PROBES) == expected


@pytest.mark.skipif(
    not nginx_available(), reason="nginx is not installed (apt-get install nginx-light; .ci/run does)"
)
@pytest.mark.timeout(300)
def test_a_rolling_restart_under_load_with_an_sdk_client_that_sees_no_error(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    """Behind nginx (the proxy settings docker compose ships), every replica is
    restarted in turn (SIGTERM: its models handed over, then a new process) while SDK
    clients learn: they never see an error, and every acknowledged step is unique."""
    names = ["m0", "m1"]
    with Replicas(redis_url, prefix, tmp_path, 3) as reps:
        proxy = NginxProcess(tmp_path / "nginx", [s.port for s in reps.servers]).start()
        try:
            with Client(proxy.url) as sdk:
                for name in names:
                    sdk.create_model(spec(name))
            reps.wait_owned(names)
            results: dict[str, list[tuple[int, dict[str, Any]]]] = {n: [] for n in names}
            errors: list[str] = []
            stop = threading.Event()

            def learner(k: int) -> None:
                with Client(proxy.url) as sdk:
                    for i, s in enumerate(samples(100_000, seed=k + 1)):
                        if stop.is_set():
                            return
                        name = names[(k + i) % len(names)]
                        try:
                            r = sdk.learn_one(name, s["x"], s["y"])
                        except Exception as exc:  # any error at all fails the test
                            errors.append(f"{type(exc).__name__}: {exc}")
                            return
                        results[name].append((r.step, s))

            threads = [threading.Thread(target=learner, args=(k,)) for k in range(3)]
            for t in threads:
                t.start()
            time.sleep(1.0)
            for i in range(3):
                reps.restart(i)
                time.sleep(1.0)
            stop.set()
            for t in threads:
                t.join(timeout=90)
            assert not errors, errors
            for name in names:
                acks = Acks()
                for step, s in results[name]:
                    acks.add(name, s, {"step": step})
                ordered = acks.check_contiguous(name)
                assert len(ordered) > 20
                expected = probe_predictions(reference(spec(name), ordered), PROBES)
                assert converged_predictions(reps.urls(), name, PROBES) == expected
        finally:
            proxy.stop()


@pytest.mark.timeout(240)
def test_uvicorn_workers_are_replicas(redis_url: str, prefix: str, tmp_path: Path) -> None:
    """``uvicorn --workers 2``: two processes behind one port, each a replica (host:pid),
    models spread over them, learns through the shared port all applied exactly once."""
    env = _service_env(redis_url, prefix, ONLINENORM_LEASE_SECONDS="2")
    srv = ProcessServer(env, tmp_path / "workers.log", uvicorn_args=("--workers", "2")).start()
    try:
        wait_for(lambda: len(_replica_ids(srv.url)) == 2, 60, "two worker replicas")
        ids = _replica_ids(srv.url)
        assert all(re.fullmatch(r".+:[0-9]+", i) for i in ids), ids  # host:pid by default
        with srv.client() as c:
            for name in ("m0", "m1"):
                create(c, spec(name))

        def spread() -> dict[str, str] | None:
            owners = {n: httpx.get(f"{srv.url}/v1/models/{n}").json()["owner"] for n in ("m0", "m1")}
            return owners if None not in owners.values() and len(set(owners.values())) == 2 else None

        owners = wait_for(spread, 30, "one model on each worker")
        assert set(owners.values()) == set(ids)
        acks = asyncio.run(_learn_everywhere([srv.url], ["m0", "m1"], per_client=20, clients=6))
        for name in ("m0", "m1"):
            ordered = acks.check_contiguous(name)
            assert len(ordered) == 60
            expected = probe_predictions(reference(spec(name), ordered), PROBES)
            assert converged_predictions([srv.url] * 4, name, PROBES) == expected
    finally:
        assert srv.stop() in (0, -15), srv.log()
