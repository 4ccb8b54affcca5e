"""Each model's own worker threads, so that one slow or huge model cannot stall the others.

Torch work used to run in asyncio's shared default executor (a handful of threads): a
model whose steps take seconds, with a few predictions queued behind its lock, held
every thread, and an unrelated small model's predict waited behind them for a minute.
Here each model gets two lanes: one thread for its writes (steps, snapshots, replays,
state loads: they are serial anyway, under the model's lock) and one for its reads
(predict, stats, metrics: they hold the same lock, so a second thread would only wait).
A lane starts its threads on demand and ends them after a
while idle, so a thousand idle models hold no threads; a model's work only ever waits
for that model's own work.

The lanes are found from the :class:`LiveModel` itself (:func:`of`), so everything that
touches a model (writer, follower, takeover, routes) shares them without plumbing, and a
model created again under the same name gets new ones; :func:`close` ends them when the
registry drops the model.

Threads still share one GIL: a busy model's Python-heavy step (an rnn's loop over time)
keeps it, and every hand-over to another thread (the event loop included) waits up to
the switch interval, 5 ms by default, several times per request. The lanes lower it to
:data:`SWITCH_INTERVAL` (measured: another model's predict went from about 17x its idle
latency to about 3x while an rnn over 2,000 steps trained).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")

#: Reads (predict, stats, metrics) of one model that may run at once.
READ_WORKERS = 1
#: Seconds a thread may keep the GIL while another waits for it (Python's default: 0.005).
SWITCH_INTERVAL = 0.0005
#: A lane's idle thread ends after this long without work.
IDLE_SECONDS = 10.0


class Lane(Executor):
    """Up to ``workers`` threads, started when work arrives and ended after idling."""

    def __init__(self, name: str, workers: int, idle_seconds: float = IDLE_SECONDS) -> None:
        self.name = name
        self.workers = workers
        self.idle_seconds = idle_seconds
        self._cond = threading.Condition()
        self._queue: deque[tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = deque()
        self._threads = 0
        self._idle = 0
        self._closed = False

    @property
    def threads(self) -> int:
        """Threads alive now (for tests and metrics)."""
        return self._threads

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError(f"the lane {self.name} is closed")
            self._queue.append((future, fn, args, kwargs))
            if self._idle >= len(self._queue):
                self._cond.notify()
            elif self._threads < self.workers:
                self._threads += 1
                threading.Thread(target=self._work, name=f"{self.name}-{self._threads}", daemon=True).start()
        return future

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    if self._closed:
                        self._threads -= 1
                        return
                    self._idle += 1
                    woken = self._cond.wait(self.idle_seconds)
                    self._idle -= 1
                    if not woken and not self._queue:
                        self._threads -= 1
                        return
                future, fn, args, kwargs = self._queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # handed to the awaiting coroutine
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new work; idle threads end now, busy ones after their current task."""
        with self._cond:
            self._closed = True
            if cancel_futures:
                while self._queue:
                    self._queue.popleft()[0].cancel()
            self._cond.notify_all()


class ModelLanes:
    """One model's write lane (one thread) and read lane (:data:`READ_WORKERS`)."""

    def __init__(self, name: str) -> None:
        self.writes = Lane(f"write:{name}", 1)
        self.reads = Lane(f"read:{name}", READ_WORKERS)

    async def write(self, fn: Callable[..., T], /, *args: Any) -> T:
        """Run a blocking write (a step, a snapshot's serialization, a load) of this model."""
        return await asyncio.wrap_future(self.writes.submit(fn, *args))

    async def read(self, fn: Callable[..., T], /, *args: Any) -> T:
        """Run a blocking read (a forward pass, stats) of this model."""
        return await asyncio.wrap_future(self.reads.submit(fn, *args))

    def close(self) -> None:
        """No new work; what is queued still runs (its callers get their answers)."""
        self.writes.shutdown()
        self.reads.shutdown()


_lanes: weakref.WeakKeyDictionary[object, ModelLanes] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def of(model: Any) -> ModelLanes:
    """The lanes of ``model`` (a :class:`LiveModel`), made on first use."""
    with _lock:
        lanes = _lanes.get(model)
        if lanes is None:
            lanes = _lanes[model] = ModelLanes(model.name)
        return lanes


def close(model: Any) -> None:
    """End ``model``'s lanes (it was dropped); a later use makes new ones."""
    with _lock:
        lanes = _lanes.pop(model, None)
    if lanes is not None:
        lanes.close()
