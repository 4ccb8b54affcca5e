"""The README's walkthrough figures are the walkthrough's own output: the script is run
here on the full stream against the real service, and every line the README shows of
its output must be a line it printed (so the figures cannot go stale)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from sklearn.datasets import load_digits

from clients import Client
from tests.clients.conftest import ROOT
from tests.clients.test_example import _example


def _readme_output() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Walkthrough: handwritten digits", 1)[1]
    block = re.search(r"```\n( samples.*?)```", section, re.S)
    assert block is not None, "the README shows the walkthrough's output in a plain ``` block"
    return [line.rstrip() for line in block.group(1).splitlines() if line.strip() and "(" not in line]


@pytest.mark.timeout(600)
def test_the_readme_shows_what_the_walkthrough_prints(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))  # as the script's main, --seed 0
    xs, ys = digits.data[order].astype(np.float32), digits.target[order]
    _example().walkthrough(client, xs, ys, chunk=100, seed=0, keep=False)
    printed = {line.rstrip() for line in capsys.readouterr().out.splitlines()}
    shown = _readme_output()
    assert len(shown) >= 5
    stale = [line for line in shown if not any(_same_line(line, p) for p in printed)]
    assert not stale, (
        f"README lines the walkthrough did not print (update them from its output): {stale}\n"
        f"it printed: {sorted(printed)}"
    )


#: How far an accuracy may move with the CPU: float32 kernels round differently on
#: different processors (AMD EPYC and Intel Xeon here), which flips a prediction or two
#: of 1797 (0.00056 each) over a stream. A stale figure is off by more.
_CPU_TOLERANCE = 0.003
_NUMBER = re.compile(r"-?\d+\.\d+")


def _same_line(shown: str, printed: str) -> bool:
    """The same words, the same integers, and accuracies within :data:`_CPU_TOLERANCE`."""
    if _NUMBER.sub("#", shown) != _NUMBER.sub("#", printed):
        return False
    pairs = zip(_NUMBER.findall(shown), _NUMBER.findall(printed), strict=True)
    return all(abs(float(a) - float(b)) <= _CPU_TOLERANCE for a, b in pairs)
