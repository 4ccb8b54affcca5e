"""Start-up of the service with many models: how long a restart takes to serve again.

For each count of models (default 10, 30 and 100 of the default spec, plus a few bigger
ones: a wide MLP, a CNN, an RNN), on a fresh key prefix:

1. start ``python -m service``, create the models, learn a few samples on each (a
   batch of 4, then one more sample), and stop it: SIGTERM (a graceful stop writes a
   last snapshot of every model), or ``kill -9`` with ``--kill`` (the log after the
   snapshots is replayed on start);
2. start it again, on the same Redis and prefix, and measure

   * ``ready``: from the process's spawn until ``GET /readyz`` answers 200 (uvicorn
     answers only once start-up, which recovers every model placed on it, is done);
   * ``first learn (recovered)``: ``POST /learn`` on a recovered model, just after;
   * ``create`` and ``first learn (new)``: ``POST /v1/models`` of a new model of the
     default spec, then its first ``POST /learn`` (target: <= 1 s);

3. and with no model at all (``0``), which is what start-up costs without models
   (imports, Redis, joining the replicas).

How ``ready`` grows from 10 to 100 models is the per-model cost of start-up (``ms per
model``): a snapshot load, a short replay, a lease, and the learner itself. It must not
grow by a compile time per model (there is none today).

Runs against ``REDIS_URL`` if set, else the embedded Redis in a temporary data dir; every
key of the run's prefix is deleted at the end. Prints a table, writes
``benchmarks/results/bench_startup.json``. About a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_service import _free_port, _http  # noqa: E402

DEFAULT = {"task": "classification", "input_shape": [64], "num_classes": 10}
BIG = {
    "wide-mlp": {"task": "classification", "input_shape": [784], "num_classes": 10,
                 "network": {"kind": "mlp", "hidden": [1024, 1024]}},
    "cnn": {"task": "classification", "input_shape": [3, 32, 32], "num_classes": 10},
    "rnn": {"task": "regression", "input_shape": [20, 8], "output_dim": 2},
}  # fmt: skip
TARGET_FIRST_LEARN_NEW_S = 1.0


def _sample(spec: dict[str, Any], i: int) -> dict[str, Any]:
    size = 1
    for d in spec["input_shape"]:
        size *= d
    x = [((i * 7 + j) % 13) / 13.0 - 0.5 for j in range(size)]
    y: Any = i % spec["num_classes"] if spec["task"] == "classification" else [0.1, -0.2]
    return {"x": x, "y": y}


@dataclass
class Row:
    models: int
    stop: str
    ready_s: float
    first_learn_recovered_s: float | None = None
    first_learn_recovered_big_s: dict[str, float] = field(default_factory=dict)
    create_s: float | None = None
    first_learn_new_s: float | None = None
    second_learn_new_s: float | None = None


class Process:
    """``python -m service`` on ``prefix``; ``start`` returns the seconds to ready."""

    def __init__(self, redis_url: str | None, prefix: str, workdir: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.environ = {
            k: v for k, v in os.environ.items() if not k.startswith("ONLINENORM_") and k != "REDIS_URL"
        }
        self.environ.update(
            ONLINENORM_PORT=str(self.port),
            ONLINENORM_KEY_PREFIX=prefix,
            ONLINENORM_LOG_LEVEL="warning",
            ONLINENORM_DATA_DIR=str(workdir / "data"),
            # one replica: a restart takes its dead predecessor's leases at once (same id)
            ONLINENORM_REPLICA_ID="bench-startup",
            PYTHONPATH=str(ROOT),
        )
        if redis_url:
            self.environ["REDIS_URL"] = redis_url
        self.log_path = workdir / "service.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        log = open(self.log_path, "ab")  # noqa: SIM115
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=ROOT, env=self.environ, stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited: see {self.log_path}")
            try:
                if _http("GET", f"{self.url}/readyz")[0] == 200:
                    return time.perf_counter() - started
            except OSError:
                pass
            time.sleep(0.02)
        raise TimeoutError("the service did not become ready")

    def stop(self, kill: bool = False) -> None:
        assert self.proc is not None
        if kill:
            self.proc.kill()
        else:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def post(self, path: str, body: dict[str, Any]) -> tuple[float, Any]:
        started = time.perf_counter()
        status, answer = _http("POST", f"{self.url}{path}", body)
        seconds = time.perf_counter() - started
        assert status in (200, 201), (path, status, answer)
        return seconds, answer


def _populate(service: Process, models: int) -> dict[str, dict[str, Any]]:
    specs = {f"m{i:03d}": DEFAULT for i in range(models)}
    if models:
        specs.update(BIG)
    for name, spec in specs.items():
        service.post("/v1/models", {"name": name, **spec})
        service.post(f"/v1/models/{name}/learn/batch", {"samples": [_sample(spec, i) for i in range(4)]})
        service.post(f"/v1/models/{name}/learn", _sample(spec, 4))
    return specs


def measure(models: int, kill: bool, redis_url: str | None, workdir: Path) -> Row:
    prefix = f"bench-startup-{uuid.uuid4().hex[:12]}"
    service = Process(redis_url, prefix, workdir)
    try:
        service.start()
        specs = _populate(service, models)
        service.stop(kill=kill)
        row = Row(models, "kill -9" if kill else "SIGTERM", service.start())
        if models:
            row.first_learn_recovered_s, answer = service.post("/v1/models/m000/learn", _sample(DEFAULT, 5))
            assert answer["step"] == 6, answer  # the 5 learned before the restart, exactly once
            for name in BIG:
                seconds, answer = service.post(f"/v1/models/{name}/learn", _sample(specs[name], 5))
                assert answer["step"] == 6, (name, answer)
                row.first_learn_recovered_big_s[name] = seconds
        row.create_s, _ = service.post("/v1/models", {"name": "fresh", **DEFAULT})
        row.first_learn_new_s, _ = service.post("/v1/models/fresh/learn", _sample(DEFAULT, 0))
        row.second_learn_new_s, _ = service.post("/v1/models/fresh/learn", _sample(DEFAULT, 1))
        return row
    finally:
        if service.proc is not None and service.proc.poll() is None:
            service.stop()
        _clean(redis_url, prefix)


def _clean(redis_url: str | None, prefix: str) -> None:
    """Every key of the run's own prefix (a fresh uuid: nothing else matches it)."""
    if not redis_url:
        return  # the embedded server's data dir goes with the temporary directory
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        for key in list(client.scan_iter(match=f"{prefix}:*", count=1000)):
            client.delete(key)
    finally:
        client.close()


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1e3:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, nargs="+", default=[10, 30, 100])
    parser.add_argument("--kill", action="store_true", help="stop with kill -9 instead of SIGTERM")
    parser.add_argument("--repeat", type=int, default=1, help="runs per count (the median is kept)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_startup.json")
    args = parser.parse_args()
    redis_url = os.environ.get("REDIS_URL")
    print(f"Redis: {redis_url or 'embedded'}; stop: {'kill -9' if args.kill else 'SIGTERM'}", flush=True)
    rows: list[Row] = []
    for models in [0, *args.models]:
        runs = []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
                runs.append(measure(models, args.kill, redis_url, Path(tmp)))
        row = sorted(runs, key=lambda r: r.ready_s)[len(runs) // 2]
        rows.append(row)
        print(
            f"  {models:4d} models: ready {_ms(row.ready_s)} ms, first learn recovered "
            f"{_ms(row.first_learn_recovered_s)} ms, new {_ms(row.first_learn_new_s)} ms",
            flush=True,
        )

    counted = [r for r in rows if r.models]
    slope = None
    if len(counted) >= 2:  # least squares: ready seconds against the number of models
        xs = [r.models + len(BIG) for r in counted]
        ys = [r.ready_s for r in counted]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)

    print(
        "\n| models | ready ms | first learn, recovered ms | first learn, recovered big ms "
        "| create ms | first learn, new ms | second learn, new ms |"
    )
    print("|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        big = ", ".join(f"{k} {v * 1e3:.0f}" for k, v in r.first_learn_recovered_big_s.items()) or "-"
        total = f"{r.models} + {len(BIG)}" if r.models else "0"
        print(
            f"| {total} | {_ms(r.ready_s)} | {_ms(r.first_learn_recovered_s)} | {big} | {_ms(r.create_s)} "
            f"| {_ms(r.first_learn_new_s)} | {_ms(r.second_learn_new_s)} |"
        )
    if slope is not None:
        span = f"{counted[0].models} -> {counted[-1].models}"
        print(f"\nstart-up grows by {slope * 1e3:.1f} ms per model ({span} models)")
    worst_new = max(r.first_learn_new_s or 0.0 for r in rows)
    met = worst_new <= TARGET_FIRST_LEARN_NEW_S
    print(
        f"target first learn on a new model <= {TARGET_FIRST_LEARN_NEW_S:g} s: {worst_new * 1e3:.0f} ms  "
        f"{'MET' if met else 'NOT MET'}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "rows": [asdict(r) for r in rows],
                "ms_per_model": None if slope is None else slope * 1e3,
                "target_first_learn_new_s": TARGET_FIRST_LEARN_NEW_S,
                "target_met": met,
                "big_models": BIG,
                "default_spec": DEFAULT,
                "stop": "kill -9" if args.kill else "SIGTERM",
                "redis": redis_url or "embedded",
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
            },
            indent=2,
        )
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
