"""Prequential accuracy when labels arrive later: delays of 0, 10, 100 and 1000 samples.

Each sample is predicted when it arrives (what a service with ``label_later`` serves),
and learned from when its label arrives, ``delay`` samples later (delays 0 and 1 are
both test-then-train); the score is the served prediction's, as the service's metrics
score it. As River's ``progressive_val_score`` does, a prediction made before any label
arrived is not scored (River's untrained models answer nothing); a stream shorter than
the delay therefore scores 0. Streams: the data sets that
ship inside scikit-learn (digits, breast cancer, wine), shuffled with a fixed seed,
and digits in its original order. Our learner gets the minimal spec and raw features.

River (``pip install river``) is the anchor when installed: its own
``progressive_val_score(..., delay=d)`` with LogisticRegression (with a scaler),
HoeffdingTree, KNN (with a scaler) and ARF (left out with ``--quick``).

    python benchmarks/bench_delay.py [--delays 0 10 100 1000] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_digits, load_wine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from model.learner import OnlineLearner  # noqa: E402

Stream = tuple[np.ndarray, np.ndarray]
LOADERS: dict[str, Callable[..., Any]] = {
    "digits": load_digits,
    "breast_cancer": load_breast_cancer,
    "wine": load_wine,
}


def streams(seed: int) -> Iterator[tuple[str, Stream]]:
    for name, loader in LOADERS.items():
        x, y = loader(return_X_y=True)
        order = np.random.default_rng(seed).permutation(len(y))
        yield f"{name} (shuffled)", (x[order].astype(np.float64), y[order].astype(np.int64))
    x, y = load_digits(return_X_y=True)
    yield "digits (original order)", (x.astype(np.float64), y.astype(np.int64))


def run_ours(stream: Stream, delay: int, overrides: dict[str, Any]) -> float:
    """Predict each sample on arrival and learn from it when its label arrives, just
    before sample ``i + delay`` (River's ``simulate_qa`` order); every served prediction
    made after the first label is scored, those whose labels come after the end too."""
    x, y = stream
    spec = {
        "name": "bench",
        "task": "classification",
        "input_shape": [x.shape[1]],
        "num_classes": int(y.max()) + 1,
        **overrides,
    }
    learner = OnlineLearner(spec)
    waiting: deque[tuple[int, torch.Tensor, int]] = deque()
    correct = scored = 0
    for i, (xi, yi) in enumerate(zip(torch.from_numpy(x).float(), y.tolist(), strict=True)):
        while waiting and waiting[0][0] + delay <= i:
            _, xj, yj = waiting.popleft()
            learner.learn_one(xj, yj)
        if learner.step:  # as River: no score for a prediction made before any label came
            correct += learner.predict_one(xi).prediction == yi
            scored += 1
        waiting.append((i, xi, yi))
    return correct / scored if scored else 0.0


def river_learners(quick: bool) -> dict[str, Callable[[], Any]]:
    if importlib.util.find_spec("river") is None:
        return {}
    from river import forest, linear_model, multiclass, neighbors, preprocessing, tree

    out: dict[str, Callable[[], Any]] = {
        "river LogisticRegression": lambda: (
            preprocessing.StandardScaler() | multiclass.OneVsRestClassifier(linear_model.LogisticRegression())
        ),
        "river HoeffdingTree": lambda: tree.HoeffdingTreeClassifier(),
        "river KNN": lambda: preprocessing.StandardScaler() | neighbors.KNNClassifier(),
    }
    if not quick:
        out["river ARF"] = lambda: forest.ARFClassifier(seed=0)
    return out


def run_river(stream: Stream, delay: int, factory: Callable[[], Any]) -> float:
    from river import evaluate, metrics

    x, y = stream
    dataset = [(dict(enumerate(xi.tolist())), int(yi)) for xi, yi in zip(x, y, strict=True)]
    metric = evaluate.progressive_val_score(dataset, factory(), metrics.Accuracy(), delay=delay or None)
    return float(metric.get())


OURS: dict[str, dict[str, Any]] = {
    "onlinenorm (online)": {},
    "onlinenorm (layer)": {"norm": {"kind": "layer"}},
    "onlinenorm (none)": {"norm": {"kind": "none"}},
}


def _cell(value: float | None) -> str:
    return f"{'n/a':>7}" if value is None else f"{value:>7.4f}"


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--delays", type=int, nargs="+", default=[0, 10, 100, 1000])
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed")
    parser.add_argument("--quick", action="store_true", help="leave River's ARF out (the slowest)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "bench_delay.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    contenders: dict[str, Callable[[Stream, int], float]] = {
        name: (lambda s, d, o=o: run_ours(s, d, o)) for name, o in OURS.items()
    }
    rivers = river_learners(args.quick)
    contenders |= {name: (lambda s, d, f=f: run_river(s, d, f)) for name, f in rivers.items()}
    if not rivers:
        print("river is not installed: River baselines skipped (pip install river)")

    data = list(streams(args.seed))
    results: dict[str, dict[str, dict[str, float]]] = {}  # learner -> stream -> delay -> accuracy
    seconds: dict[str, float] = {}
    for name, fn in contenders.items():
        start = time.perf_counter()
        results[name] = {s: {str(d): fn(stream, d) for d in args.delays} for s, stream in data}
        seconds[name] = time.perf_counter() - start
        print(f"  {name}: {seconds[name]:.1f}s", file=sys.stderr)

    width = max(len(n) for n in contenders)
    for stream_name, _ in data:
        print(f"\n{stream_name}: prequential accuracy by label delay (samples)\n")
        header = f"{'learner':<{width}} | " + " | ".join(f"{d:>7}" for d in args.delays)
        print(header)
        print("-" * len(header))
        for name, row in results.items():
            print(f"{name:<{width}} | " + " | ".join(_cell(row[stream_name][str(d)]) for d in args.delays))
    print(f"\nmean over the {len(data)} streams\n")
    header = f"{'learner':<{width}} | " + " | ".join(f"{d:>7}" for d in args.delays)
    print(header)
    print("-" * len(header))
    means = {
        name: {str(d): _mean([row[s][str(d)] for s, _ in data]) for d in args.delays}
        for name, row in results.items()
    }
    for name, row in means.items():
        print(f"{name:<{width}} | " + " | ".join(_cell(row[str(d)]) for d in args.delays))

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "accuracy": results,
                "mean": means,
                "delays": args.delays,
                "seconds": seconds,
                "seed": args.seed,
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
            indent=2,
        )
    )
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
