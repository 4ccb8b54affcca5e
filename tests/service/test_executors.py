"""Each model's lanes (service/executors.py): bounded threads, started on demand, ended
after idling, one set per live model, closed with it."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service import executors
from service.executors import Lane
from tests.service.servers import wait_for


class _Model:
    def __init__(self, name: str) -> None:
        self.name = name


def test_a_lane_runs_at_most_its_workers_at_once_and_ends_idle_threads() -> None:
    lane = Lane("t", 2, idle_seconds=0.2)
    running, peak, lock = [0], [0], threading.Lock()

    def work(i: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return i * i

    futures = [lane.submit(work, i) for i in range(8)]
    assert [f.result(timeout=10) for f in futures] == [i * i for i in range(8)]
    assert peak[0] == 2 and lane.threads <= 2
    wait_for(lambda: lane.threads == 0, 5, "idle threads to end")
    assert lane.submit(work, 3).result(timeout=10) == 9  # a new thread on demand
    lane.shutdown()
    with pytest.raises(RuntimeError):
        lane.submit(work, 1)


def test_an_error_reaches_the_caller() -> None:
    lane = Lane("t", 1)

    def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        lane.submit(fail).result(timeout=10)
    lane.shutdown()


def test_each_model_has_its_own_lanes_until_it_is_closed() -> None:
    a, b = _Model("a"), _Model("b")
    assert executors.of(a) is executors.of(a)
    assert executors.of(a) is not executors.of(b)

    async def both() -> tuple[str, str]:
        return await executors.of(a).write(lambda: threading.current_thread().name), await executors.of(
            b
        ).read(lambda: threading.current_thread().name)

    names = asyncio.run(both())
    assert names[0].startswith("write:a") and names[1].startswith("read:b")
    first = executors.of(a)
    executors.close(a)
    with pytest.raises(RuntimeError):
        first.writes.submit(lambda: None)
    assert executors.of(a) is not first  # a later use gets fresh lanes
    executors.close(a)
    executors.close(b)
