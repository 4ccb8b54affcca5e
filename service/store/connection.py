"""One Redis connection factory, and the health monitor that brings learns back after an outage.

Commands are never retried by the client library: a retried ``EXEC`` whose first
reply was lost would log samples twice. Outages are handled one level up: a failed
write reports Redis down, :class:`RedisHealth` confirms it with a ping of its own (a
command can fail alone: Redis resets the connection of one that is too big), then
learns answer 503 at once while it pings with capped exponential backoff until Redis
answers again.

Redis may also answer and refuse writes: out of memory (``maxmemory`` with
``noeviction``, or nothing left to evict). The monitor reads ``INFO memory`` with each
check and says so (:attr:`RedisHealth.refusing`): readiness and ``/metrics`` show it,
and a refused learn says what happened instead of "unreachable".
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
from redis.exceptions import (
    ClusterDownError,
    OutOfMemoryError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

try:  # redis-py >= 7: see make_client; older versions always check pooled connections
    from redis.maint_notifications import MaintNotificationsConfig

    _TCP_OPTIONS: dict[str, object] = {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}
except ImportError:  # pragma: no cover - depends on the installed redis-py
    _TCP_OPTIONS = {}

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
#: How long a ping that confirms a reported failure may take before Redis counts as down.
_CONFIRM_SECONDS = 1.0
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
    """An asyncio client for ``url`` or a unix socket, with no automatic retries.

    Maintenance notifications are off: redis-py 8 turns them on ("auto") for TCP, and
    while they are on its pool skips the check that a pooled connection is still open.
    After a Redis restart the first command on each old connection then failed
    ("Connection closed by server"), with no retry to hide it."""
    if socket_path is not None:
        return Redis(unix_socket_path=socket_path, **_options(timeout))  # type: ignore[arg-type]
    if url is None:
        raise ValueError("need a Redis URL or a unix socket path")
    return Redis.from_url(url, **_TCP_OPTIONS, **_options(timeout))


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


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether Redis refused a command for lack of memory. redis-py parses ``-OOM ...``
    into :class:`OutOfMemoryError` and drops the code from the message (a script's
    refusal reads "command not allowed when used memory > 'maxmemory'"); a reply that
    reaches us unparsed still starts with ``OOM``."""
    return isinstance(exc, OutOfMemoryError) or (
        isinstance(exc, ResponseError) and str(exc).startswith("OOM")
    )


def memory_refusal(info: dict[str, object]) -> str | None:
    """From ``INFO memory``: why Redis refuses writes now (its own rule: the memory it
    counts for eviction over ``maxmemory``, and a policy that does not evict), or None."""
    limit = int(info.get("maxmemory") or 0)  # type: ignore[call-overload]
    if limit <= 0:
        return None
    used = int(info.get("used_memory") or 0) - int(info.get("mem_not_counted_for_evict") or 0)  # type: ignore[call-overload]
    policy = str(info.get("maxmemory_policy", ""))
    if used <= limit or policy != "noeviction":
        return None
    return (
        f"Redis is out of memory ({used} of maxmemory {limit} bytes used, policy noeviction) "
        "and refuses writes"
    )


class RedisHealth:
    """Whether Redis is believed reachable (and accepting writes), and the task that
    finds out when it is back.

    Learns check :attr:`up` before writing and fail fast while it is down, instead of
    each waiting for a connection timeout.
    """

    def __init__(self, client: Redis, interval: float = 1.0, max_backoff: float = 2.0) -> None:
        self.client = client
        self.interval = interval
        self.max_backoff = max_backoff
        self.up = True
        self.down_since: float | None = None
        #: Why Redis, reachable, refuses writes (out of memory), or None.
        self.refusing: str | None = None
        self._suspect: BaseException | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def mark_down(self, exc: BaseException) -> None:
        """Called by whoever saw a Redis command fail as if Redis were unreachable. The
        monitor confirms it with a ping first: one command may fail alone (a value too
        big for Redis resets its connection), and that must not fail every model's learns."""
        if is_out_of_memory(exc):
            self.note_refusal(exc)
            return
        if self.up and self._suspect is None:
            self._suspect = exc
            self._wake.set()

    def note_refusal(self, exc: BaseException) -> None:
        """Called by whoever saw Redis refuse a write for lack of memory."""
        if self.refusing is None:
            logger.warning("Redis refuses writes (out of memory): %s", exc)
            self.refusing = f"Redis is out of memory and refuses writes ({exc})"

    def _set_down(self, exc: BaseException) -> None:
        if self.up:
            logger.warning("Redis unreachable, learns answer 503 until it is back: %s", exc)
            self.up = False
            self.down_since = time.monotonic()
            self._wake.set()

    async def _confirm(self, suspect: BaseException) -> None:
        try:
            await asyncio.wait_for(self.client.ping(), _CONFIRM_SECONDS)
        except (*UNREACHABLE, RedisError, TimeoutError) as exc:
            self._set_down(exc)
            return
        logger.warning("a Redis command failed (%s), but Redis answers: not an outage", suspect)

    async def check_memory(self) -> str | None:
        """Read ``INFO memory`` and update :attr:`refusing`; a failed read changes nothing."""
        try:
            info = await self.client.info("memory")
        except (*UNREACHABLE, RedisError):
            return self.refusing
        refusing = memory_refusal(info)
        if refusing is None and self.refusing is not None:
            logger.warning("Redis accepts writes again")
        elif refusing is not None and self.refusing is None:
            logger.warning("%s", refusing)
        self.refusing = refusing
        return refusing

    async def ping(self) -> bool:
        """One health check; updates :attr:`up` (and :attr:`refusing`)."""
        try:
            await self.client.ping()
        except (*UNREACHABLE, RedisError) as exc:
            self._set_down(exc)
            return False
        await self.check_memory()
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
            suspect, self._suspect = self._suspect, None
            if suspect is not None and self.up:
                await self._confirm(suspect)
                continue
            backoff = _FIRST_BACKOFF if await self.ping() else min(backoff * 2, self.max_backoff)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="redis-health")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()  # a ping in flight may swallow it: the flag ends the loop
            await asyncio.wait([self._task], timeout=self.interval + 1)
            self._task = None
