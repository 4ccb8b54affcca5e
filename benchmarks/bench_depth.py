"""Where normalization matters: deep networks without the linear skip path.

The default MLP's linear skip path does much of the early learning, which hides what
the hidden layers' normalization does. Here: a deep MLP without skip (``--depth`` hidden
layers of 64) on scikit-learn's digits, and the cnn on the digits as ``[1, 8, 8]``
images. Online / layer / none normalization train online at batch size 1 (one pass,
one step per sample, the learner's defaults otherwise); the paper's comparison, the
same network with BatchNorm trained offline with batches of 32 (one epoch, and ten),
stands beside them. Batch size 1 is tried at three Adam learning rates (the table shows
each one's best, chosen by the prequential accuracy, and the default's test accuracy).

Each run: a seeded 75/25 split; prequential accuracy over the training stream (online
models only) and test accuracy after training; mean and spread over ``--seeds`` seeds.

    python benchmarks/bench_depth.py [--json PATH] [--seeds 3] [--depth 7]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model.learner import OnlineLearner
from model.networks import build_network
from model.spec import ModelSpec

#: online contenders: label -> norm spec overrides
NORMS: dict[str, dict[str, Any]] = {
    "online": {"kind": "online"},
    "online, alpha_fwd=0.99": {"kind": "online", "alpha_fwd": 0.99},
    "online, ecm=ac": {"kind": "online", "ecm": "ac"},
    "layer": {"kind": "layer"},
    "none": {"kind": "none"},
}
#: learning rates tried at batch size 1 (Adam); the table shows each one's best
LRS = (0.003, 0.001, 0.0003)
BATCH = 32


def split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits shuffled with ``seed``: 75 % stream/training, 25 % test."""
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order].astype(np.float32), y[order].astype(np.int64)
    cut = int(0.75 * len(y))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def spec_for(arch: str, norm: dict[str, Any], seed: int, depth: int, lr: float = 0.003) -> dict[str, Any]:
    network: dict[str, Any] = (
        {"kind": "mlp", "hidden": [64] * depth, "skip": False} if arch == "mlp" else {"kind": "cnn"}
    )
    shape = [64] if arch == "mlp" else [1, 8, 8]
    return {
        "name": "depth",
        "task": "classification",
        "input_shape": shape,
        "num_classes": 10,
        "network": network,
        "norm": norm,
        "optimizer": {"lr": lr},
        "seed": seed,
    }


def run_online(arch: str, norm: dict[str, Any], seed: int, depth: int, lr: float) -> dict[str, float]:
    """Batch size 1, one pass: prequential accuracy, then test accuracy (eval mode)."""
    xtr, ytr, xte, yte = split(seed)
    shape = (-1,) if arch == "mlp" else (1, 8, 8)
    learner = OnlineLearner(spec_for(arch, norm, seed, depth, lr))
    correct = 0
    for xi, yi in zip(torch.from_numpy(xtr), ytr.tolist(), strict=True):
        correct += learner.learn_one(xi.reshape(shape), yi).prediction == yi
    preds = [p.prediction for p in learner.predict_many([torch.from_numpy(x).reshape(shape) for x in xte])]
    return {"prequential": correct / len(ytr), "test": float(np.mean(np.asarray(preds) == yte))}


def batchnorm_network(spec: ModelSpec) -> nn.Module:
    """The spec's network with BatchNorm where the hidden norms go, and BatchNorm (no
    affine) as the input standardizer: the same architecture as the online models."""
    net = build_network(spec.model_copy(update={"norm": spec.norm.model_copy(update={"kind": "none"})}))
    spatial = spec.network_kind == "cnn"
    bn = nn.BatchNorm2d if spatial else nn.BatchNorm1d
    net.input_norm = bn(spec.input_shape[0] if spatial else spec.input_size, affine=False)
    for block in net.blocks:
        layer = block[0]
        block[1] = bn(layer.out_channels if spatial else layer.out_features)
    return net


def run_batchnorm(arch: str, seed: int, depth: int, epochs: int) -> dict[str, float]:
    """Offline, batches of ``BATCH``, Adam at the learner's default rate; test accuracy."""
    xtr, ytr, xte, yte = split(seed)
    spec = ModelSpec.model_validate(spec_for(arch, {"kind": "none"}, seed, depth))
    net = batchnorm_network(spec)
    opt = torch.optim.Adam(net.parameters(), lr=spec.optimizer.lr)
    shape = (-1, 64) if arch == "mlp" else (-1, 1, 8, 8)
    x, y = torch.from_numpy(xtr).reshape(shape), torch.from_numpy(ytr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - 1, BATCH):  # a last batch of one cannot be batch-normalized
            idx = order[i : i + BATCH]
            if len(idx) < 2:
                continue
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        pred = net(torch.from_numpy(xte).reshape(shape)).argmax(1).numpy()
    return {"prequential": float("nan"), "test": float(np.mean(pred == yte))}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--json", default="benchmarks/results/bench_depth.json", help="where to write results"
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--depth", type=int, default=7, help="hidden layers of the deep mlp")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs: dict[str, Any] = {}
    for arch in ("mlp", "cnn"):
        label = f"mlp {args.depth}x64, no skip" if arch == "mlp" else "cnn [16, 32] on [1, 8, 8]"
        contenders = {
            (name, lr): (lambda s, n=norm, a=arch, lr=lr: run_online(a, n, s, args.depth, lr))
            for name, norm in NORMS.items()
            for lr in LRS
        }
        contenders |= {
            (f"batchnorm (batch {BATCH}, offline, {e} epoch{'s' * (e > 1)})", 0.003): (
                lambda s, e=e, a=arch: run_batchnorm(a, s, args.depth, e)
            )
            for e in (1, 10)
        }
        for (name, lr), fn in contenders.items():
            start = time.perf_counter()
            scores = [fn(seed) for seed in range(args.seeds)]
            runs.setdefault(label, {}).setdefault(name, {})[str(lr)] = {
                "prequential_mean": float(np.mean([s["prequential"] for s in scores])),
                "test_mean": float(np.mean([s["test"] for s in scores])),
                "test_std": float(np.std([s["test"] for s in scores])),
                "per_seed": scores,
                "seconds": time.perf_counter() - start,
            }
            print(f"  {label} / {name} / lr {lr}: {time.perf_counter() - start:.1f}s", file=sys.stderr)
    print(
        f"\nDigits, {args.seeds} seeds (75/25 split): prequential accuracy on the stream, "
        "test accuracy after\n"
    )
    print("| network | normalization | best lr | prequential | test (mean ± std) | test at lr 0.003 |")
    print("|---|---|---|---|---|---|")
    for label, rows in runs.items():
        for name, by_lr in rows.items():
            # best learning rate by the prequential accuracy (the stream's own score); BN has one
            lr, r = max(
                by_lr.items(), key=lambda kv: (np.nan_to_num(kv[1]["prequential_mean"]), kv[1]["test_mean"])
            )
            pre = "-" if np.isnan(r["prequential_mean"]) else f"{r['prequential_mean']:.4f}"
            at_default = by_lr["0.003"]["test_mean"]
            print(
                f"| {label} | {name} | {lr} | {pre} | {r['test_mean']:.4f} ± {r['test_std']:.4f} "
                f"| {at_default:.4f} |"
            )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "runs": runs,
                "seeds": args.seeds,
                "depth": args.depth,
                "batch": BATCH,
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
            indent=2,
        )
    )
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
