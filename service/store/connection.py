"""One Redis connection factory, and the health monitor that brings learns back after an outage.

Commands are never retried by the client library: a retried ``EXEC`` whose first
reply was lost would log samples twice. Outages are handled one level up: a failed
write marks Redis down, learns answer 503 at once, and :class:`RedisHealth` pings
with capped exponential backoff until Redis answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ClusterDownError, RedisError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

#: Errors that mean "Redis is not reachable right now" (not "the command was wrong").
UNREACHABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterDownError,
    SlotNotCoveredError,
    TryAgainError,
)
_FIRST_BACKOFF = 0.05
#: Connections per server (per node of a cluster): each owned model blocks one on its
#: bell, each waited-on model one on its results, each event stream one. redis-py's
#: default (100 since redis-py 8) would refuse commands past about a hundred models.
_MAX_CONNECTIONS = 10_000


def _options(timeout: float) -> dict[str, object]:
    # No automatic retries: a command retried after a timeout may run twice (a log
    # entry appended twice would be applied twice).
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": False,
        "max_connections": _MAX_CONNECTIONS,
    }


def make_client(url: str | None, socket_path: str | None, timeout: float) -> Redis:
    """An asyncio client for ``url`` or a unix socket, with no automatic retries."""
    if socket_path is not None:
        return Redis(unix_socket_path=socket_path, **_options(timeout))  # type: ignore[arg-type]
    if url is None:
        raise ValueError("need a Redis URL or a unix socket path")
    return Redis.from_url(url, **_options(timeout))


async def is_cluster(client: Redis) -> bool:
    """Whether the server is a Redis Cluster node (``INFO cluster``)."""
    info = await client.info("cluster")
    return bool(info.get("cluster_enabled"))


def make_cluster_client(url: str, timeout: float) -> Redis:
    """A Redis Cluster client, discovering the nodes from the one at ``url``."""
    client = RedisCluster.from_url(url, **_options(timeout))
    return client  # type: ignore[return-value]  # the same command API as Redis


async def disconnect_all(client: Redis) -> None:
    """Drop pooled connections (after an outage they may be dead)."""
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        await pool.disconnect()
        return
    for node in client.get_nodes():  # type: ignore[attr-defined]
        await node.disconnect()


async def connect(client: Redis, attempts: int, where: str) -> None:
    """Ping until Redis answers; warn on each failure, then fail loudly."""
    delay = 0.2
    for attempt in range(1, attempts + 1):
        try:
            await client.ping()
            return
        except UNREACHABLE as exc:
            if attempt == attempts:
                raise RuntimeError(
                    f"Redis at {where} is unreachable after {attempts} attempts: {exc}"
                ) from exc
            logger.warning("Redis at %s unreachable (attempt %d/%d): %s", where, attempt, attempts, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class RedisHealth:
    """Whether Redis is believed reachable, and the task that finds out when it is back.

    Learns check :attr:`up` before writing and fail fast while it is down, instead of
    each waiting for a connection timeout.
    """

    def __init__(self, client: Redis, interval: float = 1.0, max_backoff: float = 2.0) -> None:
        self.client = client
        self.interval = interval
        self.max_backoff = max_backoff
        self.up = True
        self.down_since: float | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def mark_down(self, exc: BaseException) -> None:
        """Called by whoever saw Redis fail; the monitor takes it from here."""
        if self.up:
            logger.warning("Redis unreachable, learns answer 503 until it is back: %s", exc)
            self.up = False
            self.down_since = time.monotonic()
            self._wake.set()

    async def ping(self) -> bool:
        """One health check; updates :attr:`up`."""
        try:
            await self.client.ping()
        except (*UNREACHABLE, RedisError) as exc:
            self.mark_down(exc)
            return False
        if not self.up:
            # Connections opened before the outage may be dead: drop them all.
            await disconnect_all(self.client)
            outage = time.monotonic() - (self.down_since or time.monotonic())
            logger.warning("Redis is reachable again after %.1f s", outage)
            self.up = True
            self.down_since = None
        return True

    async def _run(self) -> None:
        backoff = _FIRST_BACKOFF
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval if self.up else backoff)
            self._wake.clear()
            backoff = _FIRST_BACKOFF if await self.ping() else min(backoff * 2, self.max_backoff)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="redis-health")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()  # a ping in flight may swallow it: the flag ends the loop
            await asyncio.wait([self._task], timeout=self.interval + 1)
            self._task = None
