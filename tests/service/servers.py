"""Real servers for the service tests: the app under uvicorn in a thread (in-process,
white-box access to ``app.state``), uvicorn in a subprocess (for ``kill -9``), and a
throwaway redis-server (for outages). Every wait is a poll with a deadline."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from service.app import create_app
from service.config import Settings

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``check`` until it returns a truthy value; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # not ready yet
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what} (last error: {last_error!r})")


class ThreadServer:
    """``create_app(settings)`` served by a real uvicorn in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        self.port = free_port()
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadServer:
        self._thread.start()
        wait_for(lambda: self.server.started or not self._thread.is_alive(), 60, "uvicorn to start")
        if not self.server.started:
            raise RuntimeError("the service failed to start (see the log above)")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "uvicorn did not stop"

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    @property
    def registry(self) -> Any:
        return self.app.state.registry


class ProcessServer:
    """``python -m uvicorn service.app:app`` (or ``python -m service``) in a subprocess,
    configured by environment."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        python_m_service: bool = False,
        port: int | None = None,
        uvicorn_args: tuple[str, ...] = (),
    ) -> None:
        self.env = env
        self.log_path = log_path
        self.python_m_service = python_m_service
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.uvicorn_args = uvicorn_args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> ProcessServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ONLINENORM_") and k != "REDIS_URL"}
        env.update(self.env)
        env["PYTHONPATH"] = str(REPO)
        if self.python_m_service:  # the Makefile's run command: host and port from the settings
            env["ONLINENORM_PORT"] = str(self.port)
            cmd = [sys.executable, "-m", "service"]
        else:
            cmd = [
                sys.executable,
                "-m",
                "uvicorn",
                "service.app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *self.uvicorn_args,
            ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"the service exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"the service subprocess was not ready after {timeout} s:\n{self.log()}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """``kill -9``: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def pause(self) -> None:
        """SIGSTOP: the process stops dead (a GC pause, a partition), holding its leases."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> int:
        """SIGTERM: a graceful shutdown (final snapshots). uvicorn re-raises the signal
        once it has shut down, so a clean exit is -15 (or 0)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"the service did not stop on SIGTERM:\n{self.log()}") from None
        return self.proc.returncode

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)


class RedisProcess:
    """A throwaway redis-server on a free port, append-only, in its own directory."""

    def __init__(self, directory: Path, persist: bool = True) -> None:
        self.dir = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.persist = persist  # False: a restart starts empty (no append-only file)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisProcess:
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else ["--appendonly", "no"]
        cmd = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            *aof, "--save", "", "--daemonize", "no",
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        wait_for(up, 30, f"redis-server on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.proc = None


@contextlib.contextmanager
def temp_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="onlinenorm-test-") as d:
        yield Path(d)
