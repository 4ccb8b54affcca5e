"""Stream scikit-learn's handwritten digits (bundled: nothing is downloaded) into three
models that differ only in their hidden-layer normalization: Online Normalization,
LayerNorm, none. One optimizer step per sample, in the same order for all three;
prequential accuracy (each prediction made before learning from its sample) is
printed as they learn, and the three final accuracies at the end.

    python examples/digits_walkthrough.py                 # starts its own service
    python examples/digits_walkthrough.py --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import numpy as np
from sklearn.datasets import load_digits

from clients import Client

NORMS = ("online", "layer", "none")


@contextmanager
def local_service() -> Iterator[str]:
    """``onlinenorm serve`` on a free port with an embedded Redis in a temporary directory."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as data_dir:
        command = [sys.executable, "-m", "clients.cli", "serve", "--port", str(port),
                   "--data-dir", data_dir, "--log-level", "warning"]  # fmt: skip
        proc = subprocess.Popen(command)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(60)


def spec(name: str, norm: str, seed: int, skip: bool = True) -> dict:
    """The same network for every model (the spec's defaults); only ``norm.kind`` differs.
    ``skip=False`` drops the default linear input-to-output path, leaving the deep path alone."""
    return {
        "name": name,
        "task": "classification",
        "input_shape": [64],
        "num_classes": 10,
        "network": {"skip": skip},
        "norm": {"kind": norm},
        "seed": seed,
    }


def walkthrough(
    client: Client, xs: np.ndarray, ys: np.ndarray, chunk: int, seed: int, keep: bool, skip: bool = True
) -> dict:
    """Learn the stream with the three models side by side; returns the final accuracies."""
    run = uuid.uuid4().hex[:6]
    names = {norm: f"digits-{norm}-{run}" for norm in NORMS}
    for norm, name in names.items():
        client.create_model(spec(name, norm, seed, skip))
    try:
        correct = dict.fromkeys(NORMS, 0)
        started = time.perf_counter()
        print(f"{'samples':>8}  " + "  ".join(f"{norm:>7}" for norm in NORMS))
        for start in range(0, len(ys), chunk):
            x, y = xs[start : start + chunk], ys[start : start + chunk]
            for norm, name in names.items():
                results = client.learn_many(name, x, y, batch_size=chunk)
                correct[norm] += sum(r.prediction == t for r, t in zip(results, y.tolist(), strict=True))
            seen = start + len(y)
            print(f"{seen:>8}  " + "  ".join(f"{correct[n] / seen:>7.4f}" for n in NORMS), flush=True)
        print(f"\nfinal prequential accuracy over {len(ys)} samples ({time.perf_counter() - started:.0f} s):")
        final = {}
        for norm, name in names.items():
            final[norm] = client.metrics(name).accuracy  # the service's count agrees with ours
            assert final[norm] is not None and abs(final[norm] - correct[norm] / len(ys)) < 1e-9
            print(f"  norm.kind={norm:<7} {final[norm]:.4f}")
        return final
    finally:
        if not keep:
            for name in names.values():
                client.delete_model(name)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running service; default: start one")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--chunk", type=int, default=100, help="samples per learn/batch request")
    parser.add_argument("--seed", type=int, default=0, help="stream order and initialization")
    parser.add_argument("--keep", action="store_true", help="keep the three models afterwards")
    parser.add_argument("--no-skip", action="store_true", help="no linear skip path: the deep network alone")
    args = parser.parse_args()

    digits = load_digits()
    order = np.random.default_rng(args.seed).permutation(len(digits.target))
    xs, ys = digits.data[order].astype(np.float32), digits.target[order]
    print(f"{len(ys)} digits, 8x8 pixels (raw 0-16), streamed in one pass, one step per sample")

    with (
        local_service() if args.url is None else nullcontext(args.url) as url,
        Client(url, args.api_key) as client,
    ):
        client.wait_until_ready(timeout=120)
        walkthrough(client, xs, ys, args.chunk, args.seed, args.keep, skip=not args.no_skip)


if __name__ == "__main__":
    main()
