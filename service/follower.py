"""A replica's copy of a model it does not own, for predictions, stats and metrics.

The copy is loaded from the owner's snapshots and is read only while it is at most
``ONLINENORM_FOLLOWER_STALENESS_SECONDS`` old: it then reflects every learn acknowledged
before that. Refreshing costs one round trip while the model is idle (nothing was
logged since the copy); otherwise the replica appends a ``sync`` entry to the log, and
the owner answers it with a snapshot that includes everything logged before it. With
no owner at all (a failover in progress) the copy is served as it is, or loaded from
the last snapshot: reads stay available, and their ``step`` says what they reflect.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service import executors
from service.errors import ServiceError
from service.live import LiveModel
from service.remote import RemoteLearns
from service.store import keys, log, snapshots
from service.store.connection import UNREACHABLE
from service.store.scripts import scripts

logger = logging.getLogger(__name__)

#: A read does not wait longer than this for the owner to answer its sync.
SYNC_TIMEOUT = 5.0


def _not_after(a: str, b: str) -> bool:
    """``a <= b`` for stream ids (``''`` is before every id)."""
    return not a or (bool(b) and log.parse_id(a) <= log.parse_id(b))


class FollowerCopy:
    """Keeps one :class:`LiveModel` close enough to its owner's state."""

    def __init__(self, model: LiveModel, remote: RemoteLearns, redis: Redis, prefix: str) -> None:
        self.model = model
        self.remote = remote
        self.redis = redis
        self.prefix = prefix
        self.state_log_id = ""  # the snapshot the learner's state came from ('': none yet)
        self.as_of = ""  # the log id up to which the copy is known to be current
        self.checked_at = float("-inf")  # when (monotonic) it was known current
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        """The learner's state may differ from the log's: reload before the next read."""
        self.state_log_id = self.as_of = ""
        self.checked_at = float("-inf")

    def set_current(self, state_log_id: str, as_of: str) -> None:
        """The learner holds exactly the state of the log up to ``as_of`` (a handover)."""
        self.state_log_id, self.as_of, self.checked_at = state_log_id, as_of, time.monotonic()

    async def ensure(self, max_age: float) -> None:
        """Make the copy at most ``max_age`` seconds old (or as fresh as Redis allows)."""
        if self.state_log_id and time.monotonic() - self.checked_at <= max_age:
            return
        async with self._lock:
            if self.state_log_id and time.monotonic() - self.checked_at <= max_age:
                return
            await self._refresh()

    async def _refresh(self) -> None:
        started = time.monotonic()
        name = self.model.name
        try:
            last, snap_id, holder = (
                v.decode() if isinstance(v, bytes) else str(v)
                for v in await scripts(self.redis).peek(
                    keys=[
                        keys.log_key(self.prefix, name),
                        keys.snapshot_key(self.prefix, name),
                        keys.lease_key(self.prefix, name),
                    ]
                )
            )
        except (*UNREACHABLE, RedisError) as exc:
            if self.state_log_id:
                logger.warning("model %s: serving a stale copy, Redis is unreachable: %s", name, exc)
                return
            raise
        newest = log.later(last, snap_id)
        if self.state_log_id and _not_after(newest, self.as_of):
            self.checked_at = started  # nothing was logged since the copy
            return
        if (snap_id and _not_after(newest, snap_id)) or not holder:
            await self._load_snapshot()  # the snapshot has it all, or no owner can say more
            if _not_after(newest, self.state_log_id):
                self.checked_at = started
            return
        try:
            reply = await asyncio.wait_for(self.remote.sync(), SYNC_TIMEOUT)
        except (TimeoutError, ServiceError) as exc:
            logger.warning(
                "model %s: the owner did not answer a sync (%s); reading the last snapshot", name, exc
            )
            await self._load_snapshot()
            return
        if reply.log_id != self.state_log_id:
            await self._load_snapshot()
        self.as_of = log.later(reply.through, self.state_log_id)
        self.checked_at = started

    async def _load_snapshot(self) -> None:
        snap = await snapshots.read_snapshot(self.redis, self.prefix, self.model.name)
        if snap is None:
            return
        if snap.log_id != self.state_log_id:
            await executors.of(self.model).write(self.model.load_state, snap.state, snap.updated_at)
            self.state_log_id = self.as_of = snap.log_id
