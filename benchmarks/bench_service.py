"""Throughput and latency of the service's learn path, against in-process PyTorch loops.

Measured in one run, on one machine:

* ``eager``   -- the baseline: an eager PyTorch predict-then-learn loop (``no_grad``
  eval forward for the prediction, then forward, cross-entropy, backward, SGD step) of
  the same 64 -> 128 -> 64 -> 10 MLP *without* normalization, one sample at a time;
* ``learner`` -- for reference, ``OnlineLearner.learn_one`` of the service's model (the
  same MLP with Online Normalization) in-process: the bound on what the service can do;
* ``learn``   -- ``POST /v1/models/{name}/learn`` driven by ``wrk`` over loopback with 1
  and 16 concurrent connections;
* ``batch``   -- ``POST /v1/models/{name}/learn/batch`` with 100 samples per request, 1
  and 16 connections.

Durability is on: the service runs as ``python -m service`` (a subprocess) against
``REDIS_URL`` if set, else its embedded Redis in a temporary directory, so every
sample is in the Redis write-ahead log before it is applied and answered, and
snapshots run at their default cadence. Every loop and the service use one torch
thread (the service's default). Ratios are samples/s over the eager loop's
samples/s: the median of rounds timed before, between and after the service runs,
since the machine may be shared.

Targets (issue 9): learn at 16 clients >= 1.0x eager, learn/batch (100 samples per
request, 16 clients) >= 1.5x eager. Both need the learner's own step to beat the eager
loop (``learner`` shows it) and the service to add little to it: HTTP, validation, the
log append and the answer run on the event loop, each request once, each group of
requests one Redis round trip.

Each wrk run is made ``--rounds`` times (default 3), round-robin with the other paths,
and the median is reported: one 10 s run on a shared machine moves by 20 % and more.

Run ``python benchmarks/bench_service.py`` (about 4 minutes; ``--duration`` per wrk run).
Needs ``wrk`` (Debian: ``apt-get install wrk``). Writes ``benchmarks/results/bench_service.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing
    sys.path.insert(0, str(ROOT))

from model.learner import OnlineLearner  # noqa: E402

IN, HIDDEN, CLASSES = 64, (128, 64), 10
BATCH = 100
SPEC: dict[str, Any] = {
    "name": "bench",
    "task": "classification",
    "input_shape": [IN],
    "num_classes": CLASSES,
    # The MLP and nothing else: no input standardizer, no skip path, SGD like the baseline.
    "network": {"kind": "mlp", "hidden": list(HIDDEN), "skip": False, "input_norm": "none"},
    "norm": {"kind": "online", "alpha_fwd": 0.999, "alpha_bkw": 0.99, "ecm": "ls"},
    "optimizer": {"kind": "sgd", "lr": 0.01, "momentum": 0.9, "clip_grad_norm": None},
    "seed": 0,
}
TARGETS = (("learn, 16 clients", "learn c16", 1.0), ("learn/batch (100/request)", "batch c16", 1.5))
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclass
class Row:
    name: str
    samples_per_s: float
    requests_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    vs_eager: float | None = None
    vs_learner: float | None = None


def _samples(n: int, seed: int = 0) -> list[tuple[list[float], int]]:
    rng = random.Random(seed)
    return [([round(rng.uniform(-2, 2), 4) for _ in range(IN)], rng.randrange(CLASSES)) for _ in range(n)]


# ----------------------------------------------------------------------- in-process
def eager_loop(seconds: float) -> float:
    """Samples/s of an eager predict-then-learn loop of the plain MLP."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    width = IN
    for h in HIDDEN:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    model = nn.Sequential(*layers, nn.Linear(width, CLASSES))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    data = [(torch.tensor([x]), torch.tensor([y])) for x, y in _samples(100)]

    def step(i: int) -> None:
        x, y = data[i % len(data)]
        model.eval()
        with torch.no_grad():
            model(x).argmax(1).item()  # predict first (prequential), then learn
        model.train()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()

    return _rate(step, seconds)


def learner_loop(seconds: float) -> float:
    """Samples/s of the service's model trained in-process (learn_one from JSON lists)."""
    learner = OnlineLearner(SPEC)
    data = _samples(100)
    return _rate(lambda i: learner.learn_one(*data[i % len(data)]), seconds)


def _rate(step: Any, seconds: float) -> float:
    for i in range(50):
        step(i)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(20):
            step(n)
            n += 1
    return n / (time.perf_counter() - start)


# -------------------------------------------------------------------------- service
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


class Service:
    """``python -m service`` in a subprocess, on a fresh key prefix (or ``prefix``, for
    another replica of the same service), with ``env`` on top."""

    def __init__(
        self,
        redis_url: str | None,
        workdir: Path,
        prefix: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.prefix = prefix or f"bench-{uuid.uuid4().hex[:12]}"
        environ = {
            k: v for k, v in os.environ.items() if not k.startswith("ONLINENORM_") and k != "REDIS_URL"
        }
        environ.update(
            ONLINENORM_PORT=str(self.port),
            ONLINENORM_KEY_PREFIX=self.prefix,
            ONLINENORM_LOG_LEVEL="warning",
            ONLINENORM_DATA_DIR=str(workdir / "data"),
            PYTHONPATH=str(ROOT),
            **(env or {}),
        )
        if redis_url:
            environ["REDIS_URL"] = redis_url
        self.log = open(workdir / f"service-{self.port}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=ROOT,
            env=environ,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited: see {self.log.name}")
            try:
                if _http("GET", f"{self.url}/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError("the service did not become ready")

    def kill(self) -> None:
        """``kill -9``."""
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def _lua(bodies: list[str]) -> str:
    quoted = ",\n".join("[[" + b + "]]" for b in bodies)
    return f"""wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local bodies = {{
{quoted}
}}
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil, bodies[(n % #bodies) + 1])
end
"""


def _wrk(url: str, script: Path, connections: int, seconds: float) -> tuple[float, float, float, int]:
    """Requests/s, p50 ms, p99 ms, non-2xx/errors, from ``wrk --latency``."""
    threads = min(connections, 2)
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "60s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 120).stdout

    def latency(pct: str) -> float:
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        return float(m.group(1)) * _UNITS[m.group(2)]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return rps, latency("50"), latency("99"), errors


def _wait_idle(url: str) -> None:
    """Until the model's step stops moving: wrk leaves requests queued when it stops."""
    last = -1
    while True:
        step = _http("GET", f"{url}/v1/models/bench")[1]["step"]
        if step == last:
            return
        last = step
        time.sleep(0.3)


def run_service(
    seconds: float, redis_url: str | None, workdir: Path, baseline: list[float], rounds: int
) -> tuple[list[Row], dict[str, list[float]]]:
    """The wrk runs, ``rounds`` times each, round-robin; before each, one more round of
    the eager loop goes into ``baseline`` (the machine may be shared: interleaving exposes
    both to the same background load). A row is the median run of its rounds (by
    samples/s); the samples/s of every round come back too."""
    one = [json.dumps({"x": x, "y": y}) for x, y in _samples(200, seed=1)]
    data = _samples(BATCH * 20, seed=2)
    batches = [
        json.dumps({"samples": [{"x": x, "y": y} for x, y in data[i : i + BATCH]]})
        for i in range(0, len(data), BATCH)
    ]
    (workdir / "learn.lua").write_text(_lua(one))
    (workdir / "batch.lua").write_text(_lua(batches))
    service = Service(redis_url, workdir)
    rows = []
    try:
        status, body = _http("POST", f"{service.url}/v1/models", SPEC)
        assert status == 201, body
        learn_url = f"{service.url}/v1/models/bench/learn"
        batch_url = f"{service.url}/v1/models/bench/learn/batch"
        _wrk(learn_url, workdir / "learn.lua", 16, min(3.0, seconds))  # warm-up
        configs = (
            ("learn c1", learn_url, "learn.lua", 1, 1),
            ("learn c16", learn_url, "learn.lua", 16, 1),
            ("batch c1", batch_url, "batch.lua", 1, BATCH),
            ("batch c16", batch_url, "batch.lua", 16, BATCH),
        )
        runs: dict[str, list[Row]] = {c[0]: [] for c in configs}
        for _ in range(rounds):
            for name, url, script, conns, per_request in configs:
                _wait_idle(service.url)
                baseline.append(eager_loop(2.0))
                rps, p50, p99, errors = _wrk(url, workdir / script, conns, seconds)
                runs[name].append(Row(name, rps * per_request, rps, p50, p99, errors))
                print(
                    f"  {name:10s} {rps * per_request:9.0f} samples/s  p50 {p50:8.2f} ms  p99 {p99:8.2f} ms",
                    flush=True,
                )
        for done in runs.values():
            ranked = sorted(done, key=lambda r: r.samples_per_s)
            median = ranked[len(ranked) // 2]
            median.errors = sum(r.errors for r in done)
            rows.append(median)
        _wait_idle(service.url)
        status, metrics = _http("GET", f"{service.url}/v1/models/bench/metrics")
        print(f"  the model learned {metrics['samples_seen']} samples", flush=True)
    finally:
        _http("DELETE", f"{service.url}/v1/models/bench")  # its keys go with it
        service.stop()
    return rows, {name: [r.samples_per_s for r in done] for name, done in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--loop-seconds", type=float, default=5.0, help="seconds per in-process loop")
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs per path (the median is reported)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_service.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    # The service's default (ONLINENORM_TORCH_THREADS=1), and the fastest setting for one-sample
    # steps: with 2 threads on 2 shared cores, OpenMP spin-waits collapse under background load.
    torch.set_num_threads(1)
    redis_url = os.environ.get("REDIS_URL")
    print(
        f"Redis: {redis_url or 'embedded'}; torch {torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )

    baseline = [eager_loop(args.loop_seconds)]
    learner = learner_loop(args.loop_seconds)
    print(f"  eager      {baseline[0]:9.0f} samples/s\n  learner    {learner:9.0f} samples/s", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        rows, per_round = run_service(args.duration, redis_url, Path(tmp), baseline, args.rounds)
    baseline.append(eager_loop(args.loop_seconds))
    eager = statistics.median(baseline)
    rounds = [round(b) for b in baseline]
    print(f"  eager      {eager:9.0f} samples/s (median of rounds {rounds})")
    for name, values in per_round.items():
        print(f"  {name:10s} rounds {[round(v) for v in values]}")

    rows = [Row("eager", eager), Row("learner", learner), *rows]
    for row in rows:
        row.vs_eager = row.samples_per_s / eager
        row.vs_learner = row.samples_per_s / learner

    def cell(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    header = ("path", "samples/s", "req/s", "p50 ms", "p99 ms", "x eager", "x learner", "errors")
    print("\n{:10s} {:>10s} {:>8s} {:>8s} {:>8s} {:>8s} {:>9s} {:>6s}".format(*header))
    for r in rows:
        print(
            f"{r.name:10s} {r.samples_per_s:10.0f} {cell(r.requests_per_s, '8.0f')} {cell(r.p50_ms, '8.2f')} "
            f"{cell(r.p99_ms, '8.2f')} {cell(r.vs_eager, '8.2f')} {cell(r.vs_learner, '9.2f')} {r.errors:6d}"
        )
    by_name = {r.name: r for r in rows}
    targets = []
    print()
    for label, name, bound in TARGETS:
        ratio = by_name[name].vs_eager or 0.0
        ok = ratio >= bound
        targets.append({"target": f"{label} >= {bound}x eager", "ratio": ratio, "met": ok})
        print(f"target {label} >= {bound}x eager: {ratio:.2f}x  {'MET' if ok else 'NOT MET'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "rows": [asdict(r) for r in rows],
                "targets": targets,
                "eager_rounds": baseline,
                "service_rounds": per_round,
                "spec": SPEC,
                "batch_size": BATCH,
                "duration_s": args.duration,
                "redis": redis_url or "embedded",
                "machine": {
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "cpus": os.cpu_count(),
                    "threads": torch.get_num_threads(),
                },
            },
            indent=2,
        )
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
