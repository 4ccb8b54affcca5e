"""Speed of Online Normalization layers: forward + backward, training mode, CPU or any device.

Compares, on the same input and upstream gradient:

* ``ON``      -- ``OnlineNorm1d/2d(C, ecm=None)``: the normalizer plus affine, the
  like-for-like comparison with BatchNorm;
* ``ON-ls``   -- ``OnlineNorm1d/2d(C)``: the default layer, with layer scaling;
* ``BN``      -- ``torch.nn.BatchNorm1d/2d(C)``;
* ``LN``      -- ``torch.nn.LayerNorm`` over the C (and spatial) dims of one sample;
* ``loop``    -- the same ON layer called on each sample in turn (batch 1), forward and
  backward per sample: the sequential definition that the batched layer must match.

Timing: every variant is warmed up, given an inner repeat count so one measurement
lasts about ``--target-ms``, then the variants are measured in interleaved rounds
(alternating order) and each is summarized by its median; ratios are ratios of medians
taken in the same rounds, so background load hits all variants alike. Where the loop
over all N samples would be slow it is timed over the first ``k`` samples and scaled by
``N / k`` (every sample costs the same); such entries are marked ``*``.

Threads: one by default (``--threads``). On a machine shared with other jobs, a
two-thread kernel waits for its second thread whenever another process holds that core,
and timings jump by milliseconds at random; with one thread every variant runs alike.

Run ``python benchmarks/bench_norm.py`` (4-5 minutes on 2 cores, the largest config has
1 GiB tensors and needs ~10 GiB free) or ``--quick`` (seconds).

``--precision`` measures accuracy instead of speed: the float32 state on inputs far from
zero with a small spread (offsets 1e2..1e3, spread 0.01), against the float64 layer, for
our layer, our layer with ``state_dtype=torch.float64`` and a float32 replica of the
authors' CPU kernel loop (their order of operations), by batch size and layout.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing
    sys.path.insert(0, str(ROOT))

from model import OnlineNorm1d, OnlineNorm2d  # noqa: E402

# Targets (issue 9, item 6): (description, N, input kind or None for all, ratio key, comparison,
# bound, ON variants checked). They hold the like-for-like layer, ``ON`` (normalizer + affine,
# as LayerNorm and BatchNorm are); ``ON-ls`` adds layer scaling, a second autograd node, and
# is reported beside them. The per-sample-loop target only holds in 1d: in 2d the batched
# layer is bound by memory passes, so the faster the batch of one, the lower that ratio.
TARGETS: tuple[tuple[str, int, str | None, str, str, float, tuple[str, ...]], ...] = (
    ("ON <= 1.5x LayerNorm at N=1", 1, None, "on/ln", "<=", 1.5, ("ON",)),
    ("ON <= 3x BatchNorm in 1d at N=256", 256, "1d", "on/bn", "<=", 3.0, ("ON",)),
    ("ON >= 20x faster than per-sample loop, 1d N=256", 256, "1d", "loop/on", ">=", 20.0, ("ON",)),
)
ON_VARIANTS = {"ON": None, "ON-ls": "ls"}  # table name -> ecm


@dataclass(frozen=True)
class Config:
    """One input shape: ``(n, c)`` for 1d, ``(n, c, side, side)`` for 2d."""

    n: int
    c: int
    side: int | None  # None: 1d

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n, self.c) if self.side is None else (self.n, self.c, self.side, self.side)

    @property
    def kind(self) -> str:
        return "1d" if self.side is None else f"2d {self.side}x{self.side}"

    def nbytes(self, dtype: torch.dtype = torch.float32) -> int:
        return math.prod(self.shape) * torch.finfo(dtype).bits // 8


@dataclass
class Measurement:
    """Per-call seconds of one variant on one config."""

    variant: str
    median_s: float
    min_s: float
    q1_s: float
    q3_s: float
    rounds: int
    number: int
    samples_timed: int | None = None  # loop only: samples actually run per call
    scale: float = 1.0  # loop only: N / samples_timed, applied to every figure
    times_s: list[float] = field(default_factory=list)


# --------------------------------------------------------------------------- variants


def _synchronize(device: torch.device) -> None:
    """Wait for queued kernels on accelerators (a no-op on CPU), so timings are complete."""
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


def fwd_bwd(module: nn.Module, x: Tensor, grad: Tensor) -> Callable[[], None]:
    """One training step of ``module`` on ``x``: forward, then ``out.backward(grad)``."""

    def step() -> None:
        x.grad = None
        module(x).backward(grad)
        _synchronize(x.device)

    return step


def per_sample_loop(module: nn.Module, x: Tensor, grad: Tensor, k: int) -> Callable[[], None]:
    """Forward + backward of ``module`` on samples ``0 .. k-1``, one at a time, in order.

    Each sample is its own leaf (as in a stream), so no full-batch gradient is
    re-accumulated per sample; backward runs right after each forward, which is what the
    stream order of the control processes ``u``, ``v`` requires.
    """
    xs = [x[i : i + 1].detach().clone().requires_grad_(True) for i in range(k)]
    gs = [grad[i : i + 1] for i in range(k)]

    def step() -> None:
        for xi, gi in zip(xs, gs, strict=True):
            xi.grad = None
            module(xi).backward(gi)
        _synchronize(x.device)

    return step


def on_layer(cfg: Config, ecm: str | None, dtype: torch.dtype, device: torch.device) -> nn.Module:
    cls = OnlineNorm1d if cfg.side is None else OnlineNorm2d
    return cls(cfg.c, ecm=ecm).to(device=device, dtype=dtype).train()


def reference_layers(cfg: Config, dtype: torch.dtype, device: torch.device) -> dict[str, nn.Module]:
    """BatchNorm and LayerNorm for ``cfg``; BatchNorm1d cannot train on a single sample."""
    bn_cls = nn.BatchNorm1d if cfg.side is None else nn.BatchNorm2d
    layers: dict[str, nn.Module] = {"LN": nn.LayerNorm(cfg.shape[1:])}
    if cfg.side is not None or cfg.n > 1:
        layers["BN"] = bn_cls(cfg.c)
    return {k: m.to(device=device, dtype=dtype).train() for k, m in layers.items()}


# ----------------------------------------------------------------------------- timing


def _calibrate(fn: Callable[[], None], warmup_s: float) -> float:
    """Warm ``fn`` up for about ``warmup_s`` (at least twice); return seconds per call."""
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if calls >= 1 and elapsed >= warmup_s:
            return elapsed / calls


def measure(
    fns: dict[str, Callable[[], None]], target_s: float, max_rounds: int, min_rounds: int, budget_s: float
) -> dict[str, Measurement]:
    """Median-of-rounds per-call time of each function, the functions interleaved."""
    per_call = {name: _calibrate(fn, warmup_s=min(0.05, target_s)) for name, fn in fns.items()}
    number = {name: max(1, round(target_s / t)) for name, t in per_call.items()}
    round_cost = sum(number[k] * per_call[k] for k in fns)
    rounds = max(min_rounds, min(max_rounds, int(budget_s / max(round_cost, 1e-9))))
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            for name in names if r % 2 == 0 else reversed(names):
                fn, k = fns[name], number[name]
                start = time.perf_counter()
                for _ in range(k):
                    fn()
                times[name].append((time.perf_counter() - start) / k)
    finally:
        if gc_was_enabled:
            gc.enable()
    out = {}
    for name, ts in times.items():
        q1, _, q3 = statistics.quantiles(ts, n=4) if len(ts) > 1 else (ts[0], ts[0], ts[0])
        med = statistics.median(ts)
        out[name] = Measurement(name, med, min(ts), q1, q3, rounds, number[name], times_s=ts)
    return out


def loop_samples(module: nn.Module, x: Tensor, grad: Tensor, max_s: float) -> int:
    """How many samples the loop can run in about ``max_s`` seconds per call (at least 8)."""
    probe = min(x.shape[0], 4)
    step = per_sample_loop(module, x, grad, probe)
    step()
    start = time.perf_counter()
    step()
    per_sample = (time.perf_counter() - start) / probe
    return max(min(x.shape[0], 8), min(x.shape[0], int(max_s / per_sample)))


def bench_config(cfg: Config, args: argparse.Namespace, device: torch.device) -> dict[str, Measurement]:
    """Time every variant on ``cfg``; returns per-call medians (loop scaled to N)."""
    dtype = torch.float32
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = (torch.randn(cfg.shape, generator=gen) * 2 + 0.5).to(device=device, dtype=dtype)
    grad = torch.randn(cfg.shape, generator=gen).to(device=device, dtype=dtype)
    x.requires_grad_(True)
    fns: dict[str, Callable[[], None]] = {}
    for name, module in reference_layers(cfg, dtype, device).items():
        fns[name] = fwd_bwd(module, x, grad)
    loop_k: dict[str, int] = {}
    for name, ecm in ON_VARIANTS.items():
        layer = on_layer(cfg, ecm, dtype, device)
        fns[name] = fwd_bwd(layer, x, grad)
        loop_layer = copy.deepcopy(layer)
        k = loop_samples(loop_layer, x, grad, args.loop_max_s)
        loop_k[name] = k
        fns[f"loop({name})"] = per_sample_loop(loop_layer, x, grad, k)
    per_config_budget = args.config_budget_s
    results = measure(fns, args.target_ms / 1e3, args.rounds, args.min_rounds, per_config_budget)
    for name, k in loop_k.items():
        m = results[f"loop({name})"]
        m.samples_timed, m.scale = k, cfg.n / k
        for attr in ("median_s", "min_s", "q1_s", "q3_s"):
            setattr(m, attr, getattr(m, attr) * m.scale)
        m.times_s = [t * m.scale for t in m.times_s]
    return results


# ---------------------------------------------------------------------------- reporting


def ratios(res: dict[str, Measurement], on: str) -> dict[str, float | None]:
    """``on/bn``, ``on/ln`` and ``loop/on`` from the medians of one config."""

    def med(name: str) -> float | None:
        return res[name].median_s if name in res else None

    t_on, t_bn, t_ln, t_loop = med(on), med("BN"), med("LN"), med(f"loop({on})")
    assert t_on is not None
    return {
        "on/bn": t_on / t_bn if t_bn else None,
        "on/ln": t_on / t_ln if t_ln else None,
        "loop/on": t_loop / t_on if t_loop else None,
    }


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}"


def table(rows: list[list[str]], header: list[str]) -> str:
    """Plain right-aligned text table (wide tables survive pipes and logs intact)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def render(records: list[dict]) -> str:
    header = ["input", "C", "N", "ON variant", "BN", "LN", "ON", "loop", "ON/BN", "ON/LN", "loop/ON"]
    rows = []
    for rec in records:
        res = rec["results"]
        for on in ON_VARIANTS:
            loop = res[f"loop({on})"]
            loop_txt = fmt_time(loop["median_s"]) + ("*" if loop["scale"] != 1 else "")
            r = rec["ratios"][on]
            rows.append(
                [
                    rec["input"],
                    str(rec["c"]),
                    str(rec["n"]),
                    on,
                    fmt_time(res["BN"]["median_s"] if "BN" in res else None),
                    fmt_time(res["LN"]["median_s"]),
                    fmt_time(res[on]["median_s"]),
                    loop_txt,
                    fmt_ratio(r["on/bn"]),
                    fmt_ratio(r["on/ln"]),
                    fmt_ratio(r["loop/on"]),
                ]
            )
    return table(rows, header)


def check_targets(records: list[dict]) -> list[dict]:
    """Every target, for each ON variant, over all configs at the target's N (worst case).

    Variants a target does not hold are reported too, marked ``info``.
    """
    checks = []
    for desc, n, kind, key, op, bound, held in TARGETS:
        for on in ON_VARIANTS:
            vals = [
                (rec["ratios"][on][key], f"{rec['input']} C={rec['c']}")
                for rec in records
                if rec["n"] == n and kind in (None, rec["input"]) and rec["ratios"][on][key] is not None
            ]
            if not vals:
                continue
            ok = [(v <= bound) if op == "<=" else (v >= bound) for v, _ in vals]
            worst = max(vals) if op == "<=" else min(vals)
            checks.append(
                {
                    "target": desc,
                    "on_variant": on,
                    "held": on in held,
                    "bound": f"{key} {op} {bound}",
                    "passed": all(ok),
                    "configs": len(vals),
                    "configs_passed": sum(ok),
                    "worst": worst[0],
                    "worst_config": worst[1],
                    "values": {name: v for v, name in vals},
                }
            )
    return checks


def machine_info(device: torch.device) -> dict:
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "device": str(device),
        "dtype": "float32",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    git = ["git", "-C", str(ROOT)]
    try:
        rev = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
        dirty = subprocess.run([*git, "status", "--porcelain", "model"], capture_output=True, check=False)
        info["git_commit"] = rev.stdout.strip() or None
        info["model_dirty"] = bool(dirty.stdout.strip())
    except OSError:
        info["git_commit"] = None
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------------- main


def _their_kernel(x: Tensor, mu: Tensor, var: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """The authors' CPU forward-statistics loop in float32, in their order of operations."""
    xs = x.reshape(x.shape[0], x.shape[1], -1)
    m = xs.mean(2)
    q = (xs - m[:, :, None]).pow(2).mean(2)
    for i in range(x.shape[0]):
        d = m[i] - mu
        var = alpha * var + (1.0 - alpha) * q[i] + alpha * (1.0 - alpha) * d.pow(2)
        mu = mu + (1.0 - alpha) * d
    return mu, var


def _start(x: Tensor, layers: list[nn.Module]) -> None:
    """Start every layer at the stream's statistics (float32-rounded, the same for all):
    from the prior ``mu = 0`` the transient would dominate the variance for thousands of
    samples, and the drift of interest is that of a settled state."""
    mu = x[:64].double().transpose(0, 1).reshape(x.shape[1], -1).mean(1).float()
    with torch.no_grad():
        for layer in layers:
            layer.mu.copy_(mu)
            layer.var.fill_(1e-4)


def precision(samples: int, alpha: float = 0.999, c: int = 16) -> list[dict]:
    """Worst mean error (in standard deviations) and relative variance error over the
    second half of a stream, against the float64 layer, for each contender."""
    from model import OnlineNorm1d, OnlineNorm2d

    rows = []
    for spatial in ((), (4,), (3, 3)):
        for n in (1, 8, 32, 128):
            steps = max(2, samples // n)
            rng = np.random.default_rng(n + 10 * len(spatial))
            offsets = rng.uniform(1e2, 1e3, c).reshape((1, c) + (1,) * len(spatial))
            x = torch.tensor(
                offsets + 0.01 * rng.standard_normal((steps * n, c, *spatial)), dtype=torch.float32
            )
            cls = OnlineNorm2d if len(spatial) == 2 else OnlineNorm1d
            ref = cls(c, alpha_fwd=alpha, affine=False, ecm=None).double()
            ours = {
                "ours f32": cls(c, alpha_fwd=alpha, affine=False, ecm=None),
                "ours f64 state": cls(c, alpha_fwd=alpha, affine=False, ecm=None, state_dtype=torch.float64),
            }
            _start(x, [ref, *ours.values()])
            kernel = (ours["ours f32"].mu.clone(), ours["ours f32"].var.clone())
            worst = {name: [0.0, 0.0] for name in (*ours, "their kernel f32")}
            with torch.no_grad():
                for step in range(steps):
                    xb = x[step * n : (step + 1) * n]
                    ref(xb.double())
                    for layer in ours.values():
                        layer(xb)
                    kernel = _their_kernel(xb, *kernel, alpha)
                    if step < steps // 2:
                        continue
                    states = {k: (m.mu, m.var) for k, m in ours.items()} | {"their kernel f32": kernel}
                    for name, (mu, var) in states.items():
                        e_mu = float(((mu.double() - ref.mu).abs() / ref.var.sqrt()).max())
                        e_var = float(((var.double() - ref.var).abs() / ref.var).max())
                        worst[name] = [max(worst[name][0], e_mu), max(worst[name][1], e_var)]
            layout = "(N, C)" if not spatial else f"(N, C, {', '.join(map(str, spatial))})"
            rows.append({"layout": layout, "n": n, "samples": steps * n, "worst": worst})
            print(
                f"{layout:>14} N={n:<4} "
                + "  ".join(f"{k}: mu {v[0]:.2e} var {v[1]:.2e}" for k, v in worst.items()),
                flush=True,
            )
    return rows


def main_precision(args: argparse.Namespace) -> int:
    rows = precision(1000 if args.quick else 6000)
    print(
        "\n| layout | N | mean error / std: ours f32 / kernel f32 / ours f64 state | var rel. error: same |"
    )
    print("|---|---|---|---|")
    for r in rows:
        w = r["worst"]
        order = ("ours f32", "their kernel f32", "ours f64 state")
        print(
            f"| {r['layout']} | {r['n']} | "
            + " / ".join(f"{w[k][0]:.1e}" for k in order)
            + " | "
            + " / ".join(f"{w[k][1]:.1e}" for k in order)
            + " |"
        )
    ratio_var = max(r["worst"]["ours f32"][1] / r["worst"]["their kernel f32"][1] for r in rows)
    ratio_mu = max(r["worst"]["ours f32"][0] / r["worst"]["their kernel f32"][0] for r in rows)
    print(f"\nworst ours/kernel ratio: mean {ratio_mu:.2f}, variance {ratio_var:.2f} (<= 1: match or beat)")
    out = (
        args.json.with_name("bench_norm_precision.json") if args.json.name == "bench_norm.json" else args.json
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"rows": rows, "worst_ratio_mu": ratio_mu, "worst_ratio_var": ratio_var}, indent=1)
    )
    print(f"wrote {out}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: few configs, short timings")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "bench_norm.json")
    p.add_argument("--n", type=int, nargs="+", default=[1, 8, 32, 256, 1024], help="batch sizes")
    p.add_argument("--c", type=int, nargs="+", default=[64, 256], help="channel counts")
    p.add_argument(
        "--inputs", nargs="+", default=["1d", "2d8", "2d32"], help="1d, 2d<side> (e.g. 2d8 = 8x8 spatial)"
    )
    p.add_argument("--target-ms", type=float, default=20.0, help="length of one measurement")
    p.add_argument("--rounds", type=int, default=15, help="most interleaved rounds per config")
    p.add_argument("--min-rounds", type=int, default=3)
    p.add_argument("--config-budget-s", type=float, default=10.0, help="timing budget per config")
    p.add_argument("--loop-max-s", type=float, default=0.25, help="longest loop call before subsetting")
    p.add_argument("--max-gib", type=float, default=1.0, help="skip configs whose tensor is larger")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads; 0 = torch's default. 1 by default: on a shared machine, "
        "parallel kernels stall whenever another process holds a core, which swamps the ratios",
    )
    p.add_argument("--strict", action="store_true", help="exit 1 if a target fails")
    p.add_argument("--precision", action="store_true", help="float32 state accuracy instead of speed")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.c, args.inputs = [1, 32, 256], [64], ["1d", "2d8"]
        args.target_ms, args.rounds, args.config_budget_s, args.loop_max_s = 5.0, 5, 1.5, 0.05
    return args


def configs(args: argparse.Namespace) -> list[Config]:
    sides = [None if s == "1d" else int(s.removeprefix("2d")) for s in args.inputs]
    return [Config(n, c, side) for side in sides for c in args.c for n in args.n]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.precision:
        return main_precision(args)
    device = torch.device(args.device)
    info = machine_info(device)
    print(
        f"torch {info['torch']}, {info['torch_threads']} threads, {info['processor']}, device {device}",
        flush=True,
    )
    records: list[dict] = []
    skipped: list[dict] = []
    start = time.perf_counter()
    for cfg in configs(args):
        gib = cfg.nbytes() / 2**30
        avail = _available_bytes()
        # ~10 live tensors of the input's size at peak (x, grad, outputs, saved, grads)
        if gib > args.max_gib or (avail is not None and 10 * cfg.nbytes() > avail):
            reason = f"tensor {gib:.2f} GiB (max {args.max_gib}), available {(avail or 0) / 2**30:.1f} GiB"
            skipped.append({"input": cfg.kind, "c": cfg.c, "n": cfg.n, "reason": reason})
            print(f"skip {cfg.kind} C={cfg.c} N={cfg.n}: {reason}", flush=True)
            continue
        t0 = time.perf_counter()
        res = bench_config(cfg, args, device)
        rec = {
            "input": cfg.kind,
            "shape": list(cfg.shape),
            "n": cfg.n,
            "c": cfg.c,
            "tensor_mib": cfg.nbytes() / 2**20,
            "results": {k: asdict(m) for k, m in res.items()},
            "ratios": {on: ratios(res, on) for on in ON_VARIANTS},
        }
        records.append(rec)
        r = rec["ratios"]
        print(
            f"{cfg.kind:>9} C={cfg.c:<4} N={cfg.n:<5} ON {fmt_time(res['ON'].median_s):>10}  "
            f"ON/BN {fmt_ratio(r['ON']['on/bn']):>5}  ON/LN {fmt_ratio(r['ON']['on/ln']):>5}  "
            f"loop/ON {fmt_ratio(r['ON']['loop/on']):>6}  ({time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
        gc.collect()
    total = time.perf_counter() - start
    checks = check_targets(records)
    print()
    print(render(records))
    print(
        "\ntimes: median per forward+backward call, float32; ratios of medians from the same "
        "interleaved rounds; * = loop timed on a prefix of the batch and scaled to N."
    )
    print("ON = OnlineNorm(ecm=None), normalizer + affine; ON-ls = default layer (layer scaling).\n")
    for ch in checks:
        verdict = ("PASS" if ch["passed"] else "FAIL") if ch["held"] else "info"
        print(
            f"{verdict}  {ch['target']:<48} [{ch['on_variant']:<5}] {ch['configs_passed']}/{ch['configs']} "
            f"configs; worst {ch['bound'].split()[0]} = {ch['worst']:.2f} ({ch['worst_config']})"
        )
    held = [ch for ch in checks if ch["held"]]
    print(f"targets met: {sum(ch['passed'] for ch in held)}/{len(held)}")
    print(f"\nbenchmark time {total:.0f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": info,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "total_s": total,
        "records": records,
        "skipped": skipped,
        "targets": checks,
    }
    args.json.write_text(json.dumps(payload, indent=1))
    print(f"wrote {args.json}")
    return 1 if args.strict and not all(ch["passed"] for ch in checks if ch["held"]) else 0


if __name__ == "__main__":
    sys.exit(main())
