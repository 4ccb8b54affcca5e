"""Prequential quality of the default learner vs River, on many kinds of stream.

Test-then-train, one pass, one step per sample, raw (unscaled) features. Our learner gets
only the minimal spec (name, task, input shape, classes); ``norm.kind`` is varied to
compare Online Normalization with LayerNorm and none. Streams, all deterministic:

* ``static``: scikit-learn's digits, breast cancer and wine, in their original order
  (sorted by class: a hard, drifting stream) and shuffled;
* ``low-dim``: scikit-learn's make_moons, make_circles and make_classification with few
  informative features: low-dimensional and non-linear, where kNN is strong;
* ``drift``: River's generators with an abrupt concept drift in the middle (50 samples wide)
  (ConceptDriftStream over SEA, Agrawal and LED/LEDDrift) and with gradual drift
  (RandomRBFDrift, Hyperplane). Besides the accuracy, each abrupt drift reports the
  accuracy over the windows before and after it and the samples to recover;
* ``regression``: scikit-learn's diabetes (ordered, shuffled), make_friedman1, and
  River's FriedmanDrift; mean absolute error.

River (an optional benchmark dependency, ``pip install river``): LogisticRegression,
HoeffdingAdaptiveTree, ARF and kNN for classification; LinearRegression,
HoeffdingAdaptiveTree, ARF and kNN for regression; scalers where they need them.

    python benchmarks/bench_quality.py [--json PATH] [--quick] [--sweep] [--groups drift,...] [--only NAME]

``--sweep`` also scores candidate settings for the ON network (the evidence for the
defaults of ``model/spec.py``); ``--quick`` shortens the generated streams (development).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn import datasets as skd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model.learner import OnlineLearner

#: samples in the accuracy windows before and after a drift
WINDOW = 500
#: rolling window of the recovery measure
ROLL = 100
#: recovered: the rolling accuracy is back within this of its level (points of accuracy)
RECOVERY_TOL = 0.02


@dataclass(frozen=True)
class Stream:
    """One benchmark stream: raw features in order, targets, and where its concept jumps."""

    name: str
    group: str
    x: np.ndarray
    y: np.ndarray
    classify: bool = True
    drifts: tuple[int, ...] = ()

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1


# ------------------------------------------------------------------------------ streams


def _shuffled(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(y))
    return x[order], y[order]


def static_streams(seed: int) -> list[Stream]:
    """The six bundled data sets: original order and shuffled."""
    out = []
    for name, loader in (
        ("digits", skd.load_digits),
        ("breast_cancer", skd.load_breast_cancer),
        ("wine", skd.load_wine),
    ):
        x, y = loader(return_X_y=True)
        out.append(Stream(name, "static", x.astype(np.float64), y.astype(np.int64)))
        xs, ys = _shuffled(x, y, seed)
        out.append(Stream(f"{name} (shuffled)", "static", xs.astype(np.float64), ys.astype(np.int64)))
    return out


def lowdim_streams(seed: int, n: int) -> list[Stream]:
    """Low-dimensional, non-linear: moons, circles, few informative features."""
    made = {
        "moons": skd.make_moons(n, noise=0.2, random_state=seed),
        "circles": skd.make_circles(n, noise=0.1, factor=0.5, random_state=seed),
        "classif 3-of-10": skd.make_classification(
            n, n_features=10, n_informative=3, n_redundant=0, n_clusters_per_class=2, random_state=seed
        ),
        "classif 2-of-4 x3": skd.make_classification(
            n,
            n_features=4,
            n_informative=2,
            n_redundant=0,
            n_classes=3,
            n_clusters_per_class=1,
            random_state=seed,
        ),
    }
    return [Stream(k, "low-dim", x.astype(np.float64), y.astype(np.int64)) for k, (x, y) in made.items()]


def _from_river(dataset: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples of a River generator as arrays (features in the generator's key order)."""
    rows, targets = [], []
    for features, target in itertools.islice(dataset, n):
        rows.append([float(v) for v in features.values()])
        targets.append(target)
    return np.asarray(rows), np.asarray(targets)


def drift_streams(seed: int, n: int) -> list[Stream]:
    """River's generators: abrupt drift at ``n // 2``, and two gradual drifts."""
    from river.datasets import synth

    mid = n // 2
    abrupt = {
        "SEA 0->2": (synth.SEA(variant=0, seed=seed), synth.SEA(variant=2, seed=seed + 1)),
        "Agrawal 0->2": (
            synth.Agrawal(classification_function=0, seed=seed),
            synth.Agrawal(classification_function=2, seed=seed + 1),
        ),
        "LED -> LEDDrift(7)": (
            synth.LED(seed=seed, noise_percentage=0.1, irrelevant_features=True),
            synth.LEDDrift(seed=seed + 1, noise_percentage=0.1, irrelevant_features=True, n_drift_features=7),
        ),
    }
    out = []
    for name, (before, after) in abrupt.items():
        stream = synth.ConceptDriftStream(
            stream=before, drift_stream=after, position=mid, width=50, seed=seed
        )
        x, y = _from_river(stream, n)
        out.append(Stream(name, "drift", x, y.astype(np.int64), drifts=(mid,)))
    gradual = {
        "RandomRBFDrift": synth.RandomRBFDrift(
            seed_model=seed,
            seed_sample=seed,
            n_classes=3,
            n_features=10,
            n_centroids=20,
            change_speed=0.001,
            n_drift_centroids=10,
        ),
        "Hyperplane drift": synth.Hyperplane(seed=seed, n_features=10, n_drift_features=4, mag_change=0.001),
    }
    for name, gen in gradual.items():
        x, y = _from_river(gen, n)
        out.append(Stream(name, "drift", x, y.astype(np.int64)))
    return out


def regression_streams(seed: int, n: int) -> list[Stream]:
    """Diabetes (ordered and shuffled), Friedman #1, and Friedman with abrupt drifts."""
    x, y = skd.load_diabetes(return_X_y=True, scaled=False)
    xs, ys = _shuffled(x, y, seed)
    xf, yf = skd.make_friedman1(n, noise=1.0, random_state=seed)
    out = [
        Stream("diabetes", "regression", x, y, classify=False),
        Stream("diabetes (shuffled)", "regression", xs, ys, classify=False),
        Stream("friedman1", "regression", xf, yf, classify=False),
    ]
    if importlib.util.find_spec("river") is not None:
        from river.datasets import synth

        drifts = (n // 3, 2 * n // 3)
        x, y = _from_river(synth.FriedmanDrift(drift_type="gra", position=drifts, seed=seed), n)
        out.append(Stream("FriedmanDrift gra", "regression", x, y, classify=False, drifts=drifts))
    return out


# ------------------------------------------------------------------------------ learners


def run_ours(stream: Stream, overrides: dict[str, Any]) -> np.ndarray:
    """Per-sample scores of our learner: 1/0 correct, or the absolute error."""
    spec: dict[str, Any] = {"name": "bench", "input_shape": [stream.x.shape[1]], **overrides}
    if stream.classify:
        spec |= {"task": "classification", "num_classes": stream.num_classes}
    else:
        spec |= {"task": "regression"}
    learner = OnlineLearner(spec)
    scores = np.empty(len(stream.y))
    for i, (xi, yi) in enumerate(zip(torch.from_numpy(stream.x).float(), stream.y.tolist(), strict=True)):
        if stream.classify:
            scores[i] = learner.learn_one(xi, yi).prediction == yi
        else:
            scores[i] = abs(learner.learn_one(xi, [yi]).prediction - yi)
    return scores


def river_classifiers() -> dict[str, Callable[[], Any]]:
    """Factories for the River baselines, or nothing when River is not installed."""
    if importlib.util.find_spec("river") is None:
        return {}
    from river import forest, linear_model, multiclass, neighbors, preprocessing, tree

    return {
        "river LogisticRegression": lambda: (
            preprocessing.StandardScaler() | multiclass.OneVsRestClassifier(linear_model.LogisticRegression())
        ),
        "river HAT": lambda: tree.HoeffdingAdaptiveTreeClassifier(seed=0),
        "river ARF": lambda: forest.ARFClassifier(seed=0),
        "river KNN": lambda: preprocessing.StandardScaler() | neighbors.KNNClassifier(),
    }


def river_regressors() -> dict[str, Callable[[], Any]]:
    if importlib.util.find_spec("river") is None:
        return {}
    from river import forest, linear_model, neighbors, preprocessing, tree

    return {
        "river LinearRegression": lambda: preprocessing.StandardScaler() | linear_model.LinearRegression(),
        "river HAT (reg)": lambda: tree.HoeffdingAdaptiveTreeRegressor(seed=0),
        "river ARF (reg)": lambda: forest.ARFRegressor(seed=0),
        "river KNN (reg)": lambda: preprocessing.StandardScaler() | neighbors.KNNRegressor(),
    }


def run_river(stream: Stream, factory: Callable[[], Any]) -> np.ndarray:
    model = factory()
    scores = np.empty(len(stream.y))
    for i, (xi, yi) in enumerate(zip(stream.x, stream.y.tolist(), strict=True)):
        features = dict(enumerate(xi.tolist()))
        pred = model.predict_one(features)
        if stream.classify:
            scores[i] = pred == yi
        else:
            scores[i] = abs((0.0 if pred is None else pred) - yi)
        model.learn_one(features, yi)
    return scores


# ------------------------------------------------------------------------------ metrics


def drift_report(scores: np.ndarray, drift: int, end: int, classify: bool = True) -> dict[str, Any]:
    """Accuracy (or MAE) in the windows around ``drift`` and the samples to recover.

    Recovered: the rolling accuracy (``ROLL`` samples) is back within ``RECOVERY_TOL`` of
    ``min(before, settled)``, ``settled`` being the accuracy over the last ``WINDOW``
    samples of the new concept (it may be easier or harder than the old); counted from
    the drift, after the rolling accuracy's lowest point; 0 if it never fell below.
    For MAE the same with the error's sign flipped and a tolerance of ``RECOVERY_TOL``
    relative to ``max(before, settled)``.
    """
    before = float(scores[max(0, drift - WINDOW) : drift].mean())
    after = float(scores[drift : drift + WINDOW].mean())
    settled = float(scores[max(drift, end - WINDOW) : end].mean())
    if classify:
        target = min(before, settled) - RECOVERY_TOL
    else:  # work with -MAE, higher is better
        scores = -scores
        target = -max(before, settled) * (1 + RECOVERY_TOL)
    rolling = np.convolve(scores[max(0, drift - ROLL) : end], np.ones(ROLL) / ROLL, mode="valid")
    post = rolling[1:] if drift >= ROLL else rolling  # post[k]: window ending at drift + k
    low = int(np.argmin(post))
    if post[low] >= target:
        recovery: int | None = 0
    else:
        hits = np.nonzero(post[low:] >= target)[0]
        recovery = int(low + hits[0]) if len(hits) else None
    return {"drift": drift, "before": before, "after": after, "settled": settled, "recovery": recovery}


def summarize(stream: Stream, scores: np.ndarray) -> dict[str, Any]:
    bounds = [*stream.drifts, len(scores)]
    out: dict[str, Any] = {"score": float(scores.mean())}
    if stream.drifts:
        out["drifts"] = [
            drift_report(scores, d, bounds[i + 1], stream.classify) for i, d in enumerate(stream.drifts)
        ]
    return out


# ------------------------------------------------------------------------------ contenders

OURS: dict[str, dict[str, Any]] = {
    "onlinenorm (online)": {},
    "onlinenorm (layer)": {"norm": {"kind": "layer"}},
    "onlinenorm (none)": {"norm": {"kind": "none"}},
}

#: candidate defaults: every one is scored on every stream with ``--sweep``
SWEEP: dict[str, dict[str, Any]] = {
    "ecm=ac": {"norm": {"ecm": "ac"}},
    "ecm=ac lr=0.01": {"norm": {"ecm": "ac"}, "optimizer": {"lr": 0.01}},
    "ecm=ac hidden=[256,128]": {"norm": {"ecm": "ac"}, "network": {"hidden": [256, 128]}},
    "ecm=ac alpha_fwd=0.99": {"norm": {"ecm": "ac", "alpha_fwd": 0.99}},
    "ecm=ac skip_lr_scale=1": {"norm": {"ecm": "ac"}, "optimizer": {"skip_lr_scale": 1.0}},
    "ecm=none": {"norm": {"ecm": None}},
    "adam lr=0.01": {"optimizer": {"lr": 0.01}},
    "adam lr=0.001": {"optimizer": {"lr": 0.001}},
    "hidden=[256,128]": {"network": {"hidden": [256, 128]}},
    "hidden=[256,128] lr=0.01": {"network": {"hidden": [256, 128]}, "optimizer": {"lr": 0.01}},
    "alpha_fwd=0.99": {"norm": {"alpha_fwd": 0.99}},
    "alpha_fwd=0.99 lr=0.01": {"norm": {"alpha_fwd": 0.99}, "optimizer": {"lr": 0.01}},
    "skip_lr_scale=1": {"optimizer": {"skip_lr_scale": 1.0}},
    "ls_group_size=16": {"norm": {"ls_group_size": 16}},
    # The first samples reach the hidden layers standardized by the prior (0, 1), or by
    # one sample's variance: thousands of standard deviations wide on unscaled features.
    "input_clamp=5": {"network": {"input_clamp": 5.0}},
    "input_clamp=5 ecm=ac": {"network": {"input_clamp": 5.0}, "norm": {"ecm": "ac"}},
    "input_clamp=5 ecm=ac alpha_fwd=0.995": {
        "network": {"input_clamp": 5.0},
        "norm": {"ecm": "ac", "alpha_fwd": 0.995},
    },
}


@dataclass
class Contender:
    name: str
    kind: str  # "ours" | "river"
    fn: Callable[[Stream], np.ndarray]
    tasks: tuple[bool, ...] = (True, False)  # classify values it runs on
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0


def contenders(sweep: bool) -> list[Contender]:
    out = [Contender(n, "ours", lambda s, o=o: run_ours(s, o)) for n, o in OURS.items()]
    # the default before network.target_norm (specs stored before it still train so)
    out.append(
        Contender(
            "onlinenorm (online, raw targets)",
            "ours",
            lambda s: run_ours(s, {"network": {"target_norm": "none"}}),
            (False,),
        )
    )
    if sweep:
        out += [Contender(f"ON {n}", "sweep", lambda s, o=o: run_ours(s, o)) for n, o in SWEEP.items()]
    out += [
        Contender(n, "river", lambda s, f=f: run_river(s, f), (True,)) for n, f in river_classifiers().items()
    ]
    out += [
        Contender(n, "river", lambda s, f=f: run_river(s, f), (False,)) for n, f in river_regressors().items()
    ]
    return out


# ------------------------------------------------------------------------------ report


def _fmt(value: float | None, classify: bool) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if classify else f"{value:.2f}"


def _better_or_equal(a: float, b: float, classify: bool) -> bool:
    """``a`` matches or beats ``b``: higher accuracy, or lower error."""
    return a + 1e-12 >= b if classify else a <= b + 1e-12


def _mean_score(c: Contender, rows: list[Stream], best: dict[str, float], classify: bool) -> float:
    """Mean accuracy, or mean MAE relative to River's best (nan without River)."""
    if classify:
        return float(np.mean([c.results[s.name]["score"] for s in rows]))
    if not best:
        return math.nan
    return float(np.mean([c.results[s.name]["score"] / best[s.name] for s in rows]))


def print_tables(data: list[Stream], cands: list[Contender]) -> dict[str, Any]:
    """Print the score tables and the verdicts; returns the verdicts for the JSON.

    Regression streams average MAE relative to River's best on each stream, so streams
    of any scale weigh the same (1.0: as good as River's best).
    """
    verdicts: dict[str, Any] = {}
    for classify in (True, False):
        rows = [s for s in data if s.classify == classify]
        cs = [c for c in cands if classify in c.tasks]
        rivers = [c for c in cs if c.kind == "river"]
        if not rows or not cs:
            continue
        task = "classification" if classify else "regression"
        what = "accuracy (higher is better)" if classify else "MAE (lower is better)"
        print(f"\nPrequential {what}: test-then-train, one pass, one step per sample\n")
        print(f"{'stream':<22} " + " ".join(f"{c.name[-14:]:>14}" for c in cs))
        for s in rows:
            print(
                f"{s.name[:22]:<22} "
                + " ".join(f"{_fmt(c.results[s.name]['score'], classify):>14}" for c in cs)
            )
        pick = max if classify else min
        best = {s.name: pick(c.results[s.name]["score"] for c in rivers) for s in rows} if rivers else {}

        means = {c.name: _mean_score(c, rows, best, classify) for c in cs}
        label = "mean" if classify else "mean MAE/best"
        print(f"{label:<22} " + " ".join(f"{means[c.name]:>14.4f}" for c in cs))
        if not rivers:
            continue
        best_mean = float(np.mean(list(best.values()))) if classify else 1.0
        for c in cs:
            if c.kind == "river":
                continue
            lost = [
                s.name
                for s in rows
                if not _better_or_equal(c.results[s.name]["score"], best[s.name], classify)
            ]
            verdicts.setdefault(c.name, {})[task] = {
                "streams_matched_or_beaten_vs_river_best": len(rows) - len(lost),
                "of": len(rows),
                "mean": means[c.name],
                "river_best_mean": best_mean,
                "mean_matched_or_beaten": _better_or_equal(means[c.name], best_mean, classify),
                "lost_on": lost,
            }
        for name in ("onlinenorm (online)", "onlinenorm (online, raw targets)"):
            v = verdicts.get(name, {}).get(task)
            if v:
                print(
                    f"{name} vs River's best per stream: "
                    f"{v['streams_matched_or_beaten_vs_river_best']}/{v['of']} matched or beaten; "
                    f"mean {v['mean']:.4f} vs {v['river_best_mean']:.4f}"
                )
    drifting = [s for s in data if s.drifts]
    if drifting:
        print(
            f"\nDrift: score over {WINDOW} samples before / after, samples to recover (rolling {ROLL}, "
            f"within {RECOVERY_TOL} of min(before, settled); '-' never)\n"
        )
        for s in drifting:
            for c in cands:
                if s.classify not in c.tasks or c.kind == "sweep":
                    continue
                for d in c.results[s.name]["drifts"]:
                    rec = "-" if d["recovery"] is None else d["recovery"]
                    print(
                        f"{s.name[:20]:<20} @{d['drift']:<5} {c.name[:36]:<36} before "
                        f"{_fmt(d['before'], s.classify):>8}  after {_fmt(d['after'], s.classify):>8}"
                        f"  recover {rec:>5}"
                    )
    return verdicts


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--json", default="benchmarks/results/bench_quality.json", help="where to write results"
    )
    parser.add_argument("--seed", type=int, default=0, help="shuffle and generator seed")
    parser.add_argument("--quick", action="store_true", help="shorter generated streams (development)")
    parser.add_argument("--sweep", action="store_true", help="also score candidate defaults")
    parser.add_argument("--groups", default="static,low-dim,drift,regression", help="stream groups to run")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="run only this one of our contenders (repeatable; default: all)",
    )
    parser.add_argument(
        "--river-from", default="", help="reuse River's results from an earlier JSON of the same settings"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    n = 1000 if args.quick else 2000
    groups = args.groups.split(",")
    has_river = importlib.util.find_spec("river") is not None
    if not has_river:
        print("river is not installed: River baselines and River streams skipped (pip install river)")
    data: list[Stream] = []
    if "static" in groups:
        data += static_streams(args.seed)
    if "low-dim" in groups:
        data += lowdim_streams(args.seed, n)
    if "drift" in groups and has_river:
        data += drift_streams(args.seed, n)
    if "regression" in groups:
        data += regression_streams(args.seed, n)

    cands = contenders(args.sweep)
    if args.only:
        keep = set(args.only)
        cands = [c for c in cands if c.name in keep or c.kind == "river"]
    reused = json.loads(Path(args.river_from).read_text())["results"] if args.river_from else {}
    for c in cands:
        if c.kind == "river" and c.name in reused:
            kept = reused[c.name]["streams"]
            c.results = {s.name: kept[s.name] for s in data if s.classify in c.tasks and s.name in kept}
            if len(c.results) == sum(s.classify in c.tasks for s in data):
                c.seconds = reused[c.name]["seconds"]
                continue
        start = time.perf_counter()
        for s in data:
            if s.classify in c.tasks:
                c.results[s.name] = summarize(s, c.fn(s))
        c.seconds = time.perf_counter() - start
        print(f"  {c.name}: {c.seconds:.1f}s", file=sys.stderr)
    verdicts = print_tables(data, cands)

    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "streams": {
            s.name: {
                "group": s.group,
                "task": "classification" if s.classify else "regression",
                "samples": len(s.y),
                "features": int(s.x.shape[1]),
                "drifts": list(s.drifts),
            }
            for s in data
        },
        "results": {c.name: {"kind": c.kind, "seconds": c.seconds, "streams": c.results} for c in cands},
        "verdicts": verdicts,
        "settings": {
            "window": WINDOW,
            "roll": ROLL,
            "recovery_tol": RECOVERY_TOL,
            "samples": n,
            "seed": args.seed,
            "quick": args.quick,
        },
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    out.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
