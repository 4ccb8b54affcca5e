"""Speed of one training step in-process: ``OnlineLearner.learn_one`` against an eager loop.

Measured in one run, on one machine, one torch thread:

* ``eager loop`` -- the baseline of ``bench_service.py``: an eager PyTorch
  predict-then-learn loop of the same 64 -> 128 -> 64 -> 10 MLP *without* normalization
  (``no_grad`` prediction, forward, cross-entropy, backward, SGD with momentum);
* ``fast``  -- ``learn_one`` on the learner's default path (``model.fast`` where it covers
  the spec, else eager), from JSON-like lists as the service receives them;
* ``eager`` -- ``learn_one`` with ``path="eager"``: the autograd step, the reference.

Specs: the service benchmark's ON MLP (``bench``), the default spec for ``[64]`` inputs
(input standardizer, skip path, Adam, clipping), and, for reference, a cnn and an rnn
(which take the eager step). Variants run in interleaved rounds; each is summarized by
its median and ratios are ratios of medians, so background load hits all alike.

Also measured: the first learn of a new learner (construction + first step, target
<= 1 s, there is nothing to compile), and agreement of the two paths over a 2,000-sample
stream (share of equal predictions, final relative state difference).

Target: ``bench`` fast >= 2x the eager loop.

Run ``python benchmarks/bench_step.py`` (about a minute; ``--quick`` for seconds).
Writes ``benchmarks/results/bench_step.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:  # run as a script from anywhere, without installing
        sys.path.insert(0, str(path))

from bench_service import SPEC as BENCH_SPEC  # noqa: E402
from bench_service import _rate, eager_loop  # noqa: E402

from model.learner import OnlineLearner  # noqa: E402

TARGET = 2.0
SPECS: dict[str, dict[str, Any]] = {
    "bench": BENCH_SPEC,
    "default [64]": {"name": "d", "task": "classification", "input_shape": [64], "num_classes": 10},
    "cnn [1, 8, 8]": {"name": "c", "task": "classification", "input_shape": [1, 8, 8], "num_classes": 10},
    "rnn [8, 4]": {"name": "r", "task": "classification", "input_shape": [8, 4], "num_classes": 10},
}


@dataclass
class Row:
    spec: str
    path: str
    fast_per_s: float
    eager_per_s: float
    fast_vs_loop: float
    eager_vs_loop: float
    fast_vs_eager: float
    first_learn_ms: float


@dataclass
class Agreement:
    spec: str
    samples: int
    same_predictions: float
    final_state_rel: float


def _data(spec: dict[str, Any], n: int, seed: int = 0) -> list[tuple[list[Any], int]]:
    """JSON-like samples, as the service's learn receives them."""
    rng = np.random.default_rng(seed)
    k = spec["num_classes"]
    return [
        (np.round(rng.uniform(-2, 2, size=spec["input_shape"]), 4).tolist(), int(rng.integers(k)))
        for _ in range(n)
    ]


def _learner_rate(spec: dict[str, Any], path: str, seconds: float) -> float:
    learner = OnlineLearner(spec, path=path)  # type: ignore[arg-type]
    data = _data(spec, 100)
    return _rate(lambda i: learner.learn_one(*data[i % len(data)]), seconds)


def _first_learn_ms(spec: dict[str, Any], repeats: int = 5) -> float:
    """Construction of a learner plus its first step, median of ``repeats``."""
    (x, y), *_ = _data(spec, 1, seed=7)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        OnlineLearner(spec).learn_one(x, y)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _agreement(name: str, spec: dict[str, Any], n: int) -> Agreement:
    fast, eager = OnlineLearner(spec), OnlineLearner(spec, path="eager")
    rng = np.random.default_rng(3)
    f = spec["input_shape"][0]
    teacher = rng.normal(size=(f, spec["num_classes"]))
    same = 0
    for _ in range(n):
        x = rng.normal(size=f).astype(np.float32)
        y = int(np.argmax(x @ teacher + 0.5 * rng.normal(size=teacher.shape[1])))
        same += fast.learn_one(x, y).prediction == eager.learn_one(x, y).prediction

    def state(learner: OnlineLearner) -> torch.Tensor:
        return torch.cat(
            [t.double().flatten() for t in learner.network.state_dict().values() if t.is_floating_point()]
        )

    a, b = state(fast), state(eager)
    return Agreement(name, n, same / n, float((a - b).norm() / b.norm()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="per variant per round")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 0.3 s, short agreement")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_step.json")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 2, 0.3
    torch.set_num_threads(1)

    loops: list[float] = []
    rates: dict[tuple[str, str], list[float]] = {(name, p): [] for name in SPECS for p in ("auto", "eager")}
    for r in range(args.rounds):
        order = list(rates)
        if r % 2:
            order.reverse()
        loops.append(eager_loop(args.seconds))
        for name, path in order:
            rates[(name, path)].append(_learner_rate(SPECS[name], path, args.seconds))
    loop = statistics.median(loops)
    rows = []
    for name, spec in SPECS.items():
        fast, eager = statistics.median(rates[(name, "auto")]), statistics.median(rates[(name, "eager")])
        rows.append(
            Row(
                spec=name,
                path=OnlineLearner(spec).path,
                fast_per_s=fast,
                eager_per_s=eager,
                fast_vs_loop=fast / loop,
                eager_vs_loop=eager / loop,
                fast_vs_eager=fast / eager,
                first_learn_ms=_first_learn_ms(spec),
            )
        )
    n = 300 if args.quick else 2000
    agreements = [_agreement(name, SPECS[name], n) for name in ("bench", "default [64]")]

    print(f"eager no-norm loop: {loop:,.0f} samples/s (median of {args.rounds} rounds)\n")
    print(
        "| spec | path | learn_one/s | eager path/s | vs loop | eager path vs loop"
        " | vs eager path | first learn |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row.spec} | {row.path} | {row.fast_per_s:,.0f} | {row.eager_per_s:,.0f} | "
            f"{row.fast_vs_loop:.2f}x | {row.eager_vs_loop:.2f}x | {row.fast_vs_eager:.2f}x | "
            f"{row.first_learn_ms:.1f} ms |"
        )
    print("\n| spec | samples | same predictions | final state (rel) |")
    print("|---|---|---|---|")
    for a in agreements:
        print(f"| {a.spec} | {a.samples} | {100 * a.same_predictions:.2f}% | {a.final_state_rel:.1e} |")
    bench = rows[0]
    met = bench.fast_vs_loop >= TARGET
    first = max(row.first_learn_ms for row in rows)
    print(
        f"\ntarget: bench learn_one >= {TARGET}x the eager loop: {bench.fast_vs_loop:.2f}x"
        f" -> {'met' if met else 'MISSED'}"
    )
    print(f"target: first learn <= 1 s: worst {first:.1f} ms -> {'met' if first <= 1000 else 'MISSED'}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": 1},
                "rounds": args.rounds,
                "seconds": args.seconds,
                "eager_loop_per_s": loop,
                "rows": [asdict(r) for r in rows],
                "agreement": [asdict(a) for a in agreements],
                "targets": {"bench_vs_loop": TARGET, "met": met, "first_learn_ms_max": first},
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
