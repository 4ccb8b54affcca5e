"""A small Server-Sent Events reader over an httpx streaming response (test helper),
and a background learner that posts samples while a test watches."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import Any

import httpx
import orjson


@dataclass(frozen=True)
class Event:
    id: str | None
    event: str
    data: str

    def json(self) -> Any:
        return orjson.loads(self.data)


class SSEReader:
    """Events in arrival order; comment lines (keep-alives) are collected on the side.
    Blocks on the response (its read timeout bounds every wait); EOFError at the end."""

    def __init__(self, response: httpx.Response) -> None:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        self._lines = response.iter_lines()
        self.comments: list[str] = []
        self.retry: int | None = None

    def _block(self, until_comments: int | None = None) -> tuple[dict[str, str], list[str]] | None:
        """The next field block; None at the end of the stream, or (with ``until_comments``)
        as soon as that many comments have arrived."""
        fields: dict[str, str] = {}
        data: list[str] = []
        if until_comments is not None and len(self.comments) >= until_comments:
            return None
        for line in self._lines:
            if line == "":
                if fields or data:
                    return fields, data
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                if until_comments is not None and len(self.comments) >= until_comments:
                    return None
                continue
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "data":
                data.append(value)
            else:
                fields[key] = value
        raise EOFError("the event stream ended")

    def next_event(self) -> Event:
        while True:
            block = self._block()
            assert block is not None
            fields, data = block
            if "retry" in fields:
                self.retry = int(fields["retry"])
            if data:  # SSE: a block without data dispatches no event
                return Event(fields.get("id"), fields.get("event", "message"), "\n".join(data))

    def events(self, n: int) -> list[Event]:
        return [self.next_event() for _ in range(n)]

    def wait_for_comments(self, n: int) -> list[str]:
        """Read until ``n`` comment lines arrived (events in between are dropped)."""
        while self._block(until_comments=n) is not None:
            pass
        return self.comments

    def read_to_end(self) -> list[Event]:
        out = []
        while True:
            try:
                out.append(self.next_event())
            except EOFError:
                return out


def blob_sample(rng: random.Random, size: int = 4, classes: int = 3) -> dict[str, Any]:
    """A learnable classification sample: the class sets the mean of every feature."""
    y = rng.randrange(classes)
    return {"x": [3.0 * y + 2.0 * j + rng.gauss(0, 1) for j in range(size)], "y": y}


class BackgroundLearner:
    """Posts single learns to ``name`` from a thread until stopped: the samples
    "being learned" while a stream or a browser watches."""

    def __init__(
        self,
        base_url: str,
        name: str,
        headers: dict[str, str] | None = None,
        pause: float = 0.02,
        size: int = 4,
    ) -> None:
        self.base_url, self.name, self.headers, self.pause, self.size = (
            base_url,
            name,
            headers or {},
            pause,
            size,
        )
        self.posted = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=30) as client:
            rng = random.Random(0)
            while not self._stop.is_set():
                r = client.post(f"/v1/models/{self.name}/learn", json=blob_sample(rng, self.size))
                if r.status_code != 200:
                    self.errors.append(r.text)
                    return
                self.posted += 1
                self._stop.wait(self.pause)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> BackgroundLearner:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the background learner did not stop"
