"""Stateful rnn streams on memory tasks that no stateless model can solve.

Tasks, prequential (each step predicts, then learns from its label), many streams
interleaved at random (one shared model, a hidden state per stream):

* ``recall`` -- each stream emits N(0, 1) inputs; the target at step t is the
  stream's own inputs at t-1 ... t-5 (five outputs, one per delay k = 1..5). Metric:
  R^2 per k (1 - MSE / variance) over the second half of the run. A stateless model
  sees only ``x_t``, which is independent of every target: R^2 <= 0.
* ``sine`` -- each stream is a sine of its own frequency (0.15 .. 0.6 rad/step) and
  phase plus N(0, 0.1^2) noise; the target is the stream's next observation. Metric:
  MSE over the second half, against persistence (predict ``x_t``) and the noise floor
  0.01. A stateless model cannot tell a rising sine from a falling one.

Models: the stateful rnn with ``norm.kind`` online / layer / none, the stateless mlp
(the default spec for ``[1]`` inputs) with the same three; then sweeps of the stateful
rnn's ``bptt``, ``hidden`` and ``lr`` (online), from which the stateful defaults are
proposed; and the rule of ON's control processes under truncated BPTT (``"arrival"``,
:mod:`model.stream`) against two alternatives: every window step corrected with the
frozen ``u``/``v`` and the newest step's increments (``"correct-all"``), or the mean of
all steps' increments (``"mean"``, which diverges: rolled-back steps, ``max abs v``).
Every run is seeded and deterministic; one torch thread per run.

Run ``python benchmarks/bench_streams.py`` (a few minutes on 2 cores; ``--quick`` for
about a minute, ``--jobs`` processes). Writes ``benchmarks/results/bench_streams.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing
    sys.path.insert(0, str(ROOT))

from model import stream  # noqa: E402
from model.learner import OnlineLearner, StepRolledBackError  # noqa: E402
from model.networks import online_norm_layers  # noqa: E402

DELAYS = 5
RULES = ("arrival", "correct-all", "mean")  # model.stream.CONTROL_RULE
NOISE = 0.1


@dataclass(frozen=True)
class Run:
    task: str
    model: str  # a label for the table
    kind: str  # "rnn" (stateful) or "mlp" (stateless)
    norm: str
    hidden: tuple[int, ...]
    bptt: int
    lr: float
    streams: int
    steps: int
    seed: int = 0
    rule: str = "arrival"  # model.stream.CONTROL_RULE: how u, v meet the window


@dataclass
class Outcome:
    run: Run
    path: str
    metric: dict[str, float]
    ms_per_step: float
    stream_bytes: int | None
    rolled_back: int  # steps refused as non-finite (their prediction scores as 0)
    v_abs_max: float | None  # the largest |v| of any ON layer at the end


def _spec(run: Run) -> dict[str, Any]:
    out = {"output_dim": DELAYS} if run.task == "recall" else {}
    spec: dict[str, Any] = {
        "name": "bench",
        "task": "regression",
        "input_shape": [1],
        **out,
        "norm": {"kind": run.norm},
        "optimizer": {"lr": run.lr},
        "seed": run.seed,
    }
    if run.kind == "rnn":
        spec["network"] = {"stateful": True, "hidden": list(run.hidden), "bptt": run.bptt}
    else:
        # raw targets, as the stateful rnn's (which has no target_norm): the same task for both
        spec["network"] = {"hidden": list(run.hidden), "target_norm": "none"}
    return spec


def _data(run: Run) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(stream of each step, x, y)``: streams interleaved at random."""
    rng = np.random.default_rng(1000 + run.seed)
    order = rng.integers(run.streams, size=run.steps)
    xs = np.zeros(run.steps, dtype=np.float32)
    ys = np.zeros((run.steps, DELAYS if run.task == "recall" else 1), dtype=np.float32)
    position = np.zeros(run.streams, dtype=np.int64)
    if run.task == "recall":
        history = np.zeros((run.streams, DELAYS), dtype=np.float32)  # newest first
        for i, s in enumerate(order):
            x = rng.normal()
            xs[i], ys[i] = x, history[s]
            history[s] = np.roll(history[s], 1)
            history[s, 0] = x
    else:
        freq = rng.uniform(0.15, 0.6, size=run.streams)
        phase = rng.uniform(0, 2 * np.pi, size=run.streams)
        noise = rng.normal(0, NOISE, size=(run.streams, run.steps + 1))

        def obs(s: int, t: int) -> float:
            return float(np.sin(freq[s] * t + phase[s]) + noise[s, t])

        for i, s in enumerate(order):
            t = position[s]  # the stream's own clock
            xs[i], ys[i, 0] = obs(s, t), obs(s, t + 1)
            position[s] += 1
    return order, xs, ys


def execute(run: Run) -> Outcome:
    torch.set_num_threads(1)
    stream.CONTROL_RULE = run.rule  # this worker process only
    learner = OnlineLearner(_spec(run))
    order, xs, ys = _data(run)
    states: dict[int, Any] = {}
    preds = np.zeros_like(ys)
    rolled_back = 0
    start = time.perf_counter()
    for i, (s, x, y) in enumerate(zip(order, xs, ys, strict=True)):
        try:
            if run.kind == "rnn":
                states[s], r = learner.stream_step(states.get(s), [float(x)], y.tolist())
                value = r.prediction.prediction
            else:
                value = learner.learn_one([float(x)], y.tolist()).prediction
        except StepRolledBackError:
            rolled_back += 1
            continue
        preds[i] = value
    ms = (time.perf_counter() - start) * 1e3 / run.steps
    half = slice(run.steps // 2, None)
    if run.task == "recall":
        err = ((preds[half] - ys[half]) ** 2).mean(0)
        r2 = 1 - err / ys[half].var(0)
        metric = {f"k{k + 1}": float(r2[k]) for k in range(DELAYS)}
        metric["mean"] = float(r2.mean())
    else:
        metric = {
            "mse": float(((preds[half] - ys[half]) ** 2).mean()),
            "persistence_mse": float(((xs[half, None] - ys[half]) ** 2).mean()),
        }
    size = max((st.nbytes for st in states.values()), default=None)
    vs = [float(m.v.abs().max()) for _, m in online_norm_layers(learner.network) if m.affine]
    return Outcome(run, learner.path, metric, ms, size, rolled_back, max(vs, default=None))


def plan(steps: int, streams: int, quick: bool) -> list[Run]:
    runs: list[Run] = []
    rnn = {"kind": "rnn", "hidden": (32,), "bptt": 8, "lr": 0.003}
    mlp = {"kind": "mlp", "hidden": (128, 64), "bptt": 0, "lr": 0.003}
    for task in ("recall", "sine"):
        for norm in ("online", "layer", "none"):
            runs.append(Run(task, f"rnn {norm}", norm=norm, streams=streams, steps=steps, **rnn))  # type: ignore[arg-type]
        for norm in ("online", "layer", "none"):
            runs.append(Run(task, f"mlp {norm}", norm=norm, streams=streams, steps=steps, **mlp))  # type: ignore[arg-type]
    runs.append(Run("recall", "rnn online, 1 stream", norm="online", streams=1, steps=steps, **rnn))  # type: ignore[arg-type]
    bptts = (1, 4, 16) if quick else (1, 2, 4, 16)
    for task in ("recall", "sine"):
        for k in bptts:
            runs.append(Run(task, f"rnn bptt={k}", "rnn", "online", (32,), k, 0.003, streams, steps))
        if not quick:
            for h in (16, 64):
                runs.append(Run(task, f"rnn hidden=[{h}]", "rnn", "online", (h,), 8, 0.003, streams, steps))
            runs.append(Run(task, "rnn lr=0.01", "rnn", "online", (32,), 8, 0.01, streams, steps))
            runs.append(
                Run(task, "rnn spec defaults now", "rnn", "online", (128, 64), 16, 0.003, streams, steps)
            )
    # ON's control processes under truncated BPTT: the alternatives to the rule
    # ("arrival"), whose twins are "rnn online" and "rnn spec defaults now" above
    for task, hidden, k in (("recall", (32,), 8), ("sine", (32,), 8), ("sine", (128, 64), 16)):
        if quick and hidden != (32,):
            continue
        for rule in RULES[1:]:
            runs.append(
                Run(task, f"rnn rule={rule}", "rnn", "online", hidden, k, 0.003, streams, steps, rule=rule)
            )
    return runs


def _row(o: Outcome) -> str:
    r = o.run
    if r.task == "recall":
        m = o.metric
        score = " | ".join(f"{m[f'k{k}']:.3f}" for k in range(1, DELAYS + 1)) + f" | **{m['mean']:.3f}**"
    else:
        score = f"{o.metric['mse']:.4f} | {o.metric['persistence_mse']:.4f}"
    size = "" if o.stream_bytes is None else f"{o.stream_bytes:,}"
    v = "" if o.v_abs_max is None else f"{o.v_abs_max:.2g}"
    return (
        f"| {r.model} | {list(r.hidden)} | {r.bptt or '-'} | {r.lr} | {r.streams} | {score} |"
        f" {o.ms_per_step:.2f} | {o.path} | {size} | {o.rolled_back} | {v} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500, help="time steps per run, all streams together")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="600 steps, a shorter sweep")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_streams.json")
    args = parser.parse_args()
    if args.quick:
        args.steps = 600
    runs = plan(args.steps, args.streams, args.quick)
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        outcomes = list(pool.map(execute, runs))
    elapsed = time.perf_counter() - start
    tail = "| ms/step | path | bytes/stream | rolled back | max abs v |"
    for task in ("recall", "sine"):
        print(f"\n### {task}: {args.steps} steps of {args.streams} interleaved streams, second half scored\n")
        if task == "recall":
            print("| model | hidden | bptt | lr | streams | R² k=1 | k=2 | k=3 | k=4 | k=5 | mean " + tail)
            print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        else:
            print(
                f"| model | hidden | bptt | lr | streams | MSE | persistence MSE (noise floor {NOISE**2:g}) "
                + tail
            )
            print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for o in outcomes:
            if o.run.task == task:
                print(_row(o))
    print(f"\n{len(runs)} runs in {elapsed:.0f} s with {args.jobs} processes")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": 1},
                "steps": args.steps,
                "streams": args.streams,
                "noise": NOISE,
                "elapsed_s": elapsed,
                "runs": [
                    {**asdict(o.run), **{k: v for k, v in asdict(o).items() if k != "run"}} for o in outcomes
                ],
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
