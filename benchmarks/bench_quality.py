"""Prequential accuracy of the default learner vs River on streams from scikit-learn.

Test-then-train, one pass, one step per sample, on the data sets that ship inside
scikit-learn (digits, breast cancer, wine), in their original order (often sorted by
class: a hard, drifting stream) and shuffled. Our learner gets only the minimal spec
(name, task, input shape, classes) and raw, unscaled features; ``norm.kind`` is
varied to compare Online Normalization with LayerNorm and no normalization.

River (``pip install river``, an optional benchmark dependency) is run when installed:
LogisticRegression (one-vs-rest, with StandardScaler), HoeffdingTreeClassifier,
ARFClassifier and KNNClassifier (with StandardScaler).

    python benchmarks/bench_quality.py [--json PATH] [--sweep]

``--sweep`` also scores a small grid of optimizer settings for the ON network: the
evidence behind the defaults in ``model/spec.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_digits, load_wine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model.learner import OnlineLearner

DATASETS: dict[str, Callable[..., Any]] = {
    "digits": load_digits,
    "breast_cancer": load_breast_cancer,
    "wine": load_wine,
}
Stream = tuple[np.ndarray, np.ndarray]


def streams(seed: int) -> Iterator[tuple[str, Stream]]:
    """Each data set in its original order and shuffled with ``seed``."""
    for name, loader in DATASETS.items():
        x, y = loader(return_X_y=True)
        yield f"{name}", (x.astype(np.float64), y.astype(np.int64))
        order = np.random.default_rng(seed).permutation(len(y))
        yield f"{name} (shuffled)", (x[order].astype(np.float64), y[order].astype(np.int64))


def run_ours(stream: Stream, overrides: dict[str, Any]) -> float:
    x, y = stream
    spec = {
        "name": "bench",
        "task": "classification",
        "input_shape": [x.shape[1]],
        "num_classes": int(y.max()) + 1,
        **overrides,
    }
    learner = OnlineLearner(spec)
    correct = 0
    for xi, yi in zip(torch.from_numpy(x).float(), y.tolist(), strict=True):
        correct += learner.learn_one(xi, yi).prediction == yi
    return correct / len(y)


def river_learners() -> dict[str, Callable[[], Any]]:
    """Factories for the River baselines, or nothing when River is not installed."""
    if importlib.util.find_spec("river") is None:
        return {}
    from river import forest, linear_model, multiclass, neighbors, preprocessing, tree

    return {
        "river LogisticRegression": lambda: (
            preprocessing.StandardScaler() | multiclass.OneVsRestClassifier(linear_model.LogisticRegression())
        ),
        "river HoeffdingTree": lambda: tree.HoeffdingTreeClassifier(),
        "river ARF": lambda: forest.ARFClassifier(seed=0),
        "river KNN": lambda: preprocessing.StandardScaler() | neighbors.KNNClassifier(),
    }


def run_river(stream: Stream, factory: Callable[[], Any]) -> float:
    x, y = stream
    model = factory()
    correct = 0
    for xi, yi in zip(x, y.tolist(), strict=True):
        features = dict(enumerate(xi.tolist()))
        correct += model.predict_one(features) == yi
        model.learn_one(features, yi)
    return correct / len(y)


OURS: dict[str, dict[str, Any]] = {
    "onlinenorm (online)": {},
    "onlinenorm (layer)": {"norm": {"kind": "layer"}},
    "onlinenorm (none)": {"norm": {"kind": "none"}},
}

SWEEP: dict[str, dict[str, Any]] = {
    "adam lr=0.001": {"optimizer": {"kind": "adam", "lr": 0.001}},
    "adam lr=0.003": {"optimizer": {"kind": "adam", "lr": 0.003}},
    "adam lr=0.01": {"optimizer": {"kind": "adam", "lr": 0.01}},
    "sgd lr=0.01 m=0.9": {"optimizer": {"kind": "sgd", "lr": 0.01, "momentum": 0.9}},
    "sgd lr=0.05 m=0.9": {"optimizer": {"kind": "sgd", "lr": 0.05, "momentum": 0.9}},
    "adam lr=0.003 hidden=[256]": {"optimizer": {"kind": "adam", "lr": 0.003}, "network": {"hidden": [256]}},
    "adam lr=0.003 alpha_fwd=0.99": {"optimizer": {"kind": "adam", "lr": 0.003}, "norm": {"alpha_fwd": 0.99}},
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--json", default="benchmarks/results/bench_quality.json", help="where to write results"
    )
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed")
    parser.add_argument("--sweep", action="store_true", help="also score the optimizer grid for the defaults")
    args = parser.parse_args()
    torch.set_num_threads(1)

    contenders: dict[str, Callable[[Stream], float]] = {
        name: (lambda s, o=overrides: run_ours(s, o)) for name, overrides in OURS.items()
    }
    if args.sweep:
        contenders |= {f"ON {name}": (lambda s, o=o: run_ours(s, o)) for name, o in SWEEP.items()}
    rivers = river_learners()
    contenders |= {name: (lambda s, f=f: run_river(s, f)) for name, f in rivers.items()}
    if not rivers:
        print("river is not installed: River baselines skipped (pip install river)")

    data = list(streams(args.seed))
    results: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    for name, fn in contenders.items():
        start = time.perf_counter()
        results[name] = {stream_name: fn(stream) for stream_name, stream in data}
        seconds[name] = time.perf_counter() - start
        print(f"  {name}: {seconds[name]:.1f}s", file=sys.stderr)

    stream_names = [s for s, _ in data]
    width = max(len(n) for n in contenders)
    header = f"{'learner':<{width}} | " + " | ".join(f"{s:>22}" for s in stream_names) + " |   mean"
    print("\nPrequential accuracy (test-then-train, one pass, one step per sample)\n")
    print(header)
    print("-" * len(header))
    for name, row in results.items():
        cells = " | ".join(f"{row[s]:>22.4f}" for s in stream_names)
        print(f"{name:<{width}} | {cells} | {np.mean(list(row.values())):.4f}")

    default = results["onlinenorm (online)"]
    verdicts = {}
    for name in rivers:
        beaten = [s for s in stream_names if default[s] + 1e-12 >= results[name][s]]
        verdicts[name] = {"streams_matched_or_beaten": len(beaten), "of": len(stream_names)}
        print(f"defaults match or beat {name} on {len(beaten)}/{len(stream_names)} streams")

    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "accuracy": results,
                "seconds": seconds,
                "verdicts": verdicts,
                "torch": torch.__version__,
                "python": platform.python_version(),
                "seed": args.seed,
            },
            indent=2,
        )
    )
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
