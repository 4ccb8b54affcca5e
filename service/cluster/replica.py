"""This process as one replica among many: membership, placement, leases, hand-over.

Every replica heartbeats into ``{p}:replicas``, follows the catalog, and computes the
same placement of models on the live replicas (:mod:`service.cluster.placement`).
For each model placed on it, it takes the lease and takes the model over
(:mod:`service.cluster.takeover`); for each model it owns but no longer should, it
hands over: applies what is queued, writes a last snapshot, releases the lease. Leases
are renewed every third of their length; one lost (renewal refused, or a fenced write
refused) stops the writer at once, and its unfinished requests are answered through
the new owner. A lease left free for a whole lease period by whoever should take it is
taken by any replica, and a lease held by a dead process of this host (``host:pid``)
is taken at once, so a restarted single replica does not wait for its old leases.

When Redis loses data under a running service (a restart without persistence, a flush)
every owner notices on its next fenced write or renewal, and re-persists what it holds
in memory (spec, state, records) under a new incarnation, loudly: nothing it
acknowledged is lost. ``/readyz`` and ``/metrics`` show that it happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import psutil
from redis.asyncio import Redis
from redis.exceptions import RedisError

from service import executors
from service.cluster import placement
from service.cluster.takeover import Context, Unrecoverable, take_over
from service.config import Settings
from service.errors import NotFoundError, UnavailableError
from service.registry import ModelHandle, Registry
from service.store import catalog, events, keys, leases, log, membership, snapshots
from service.store.connection import UNREACHABLE, RedisHealth
from service.store.fencing import Fence, FencedError, FencedWrite
from service.store.leases import ModelGone
from service.telemetry import Telemetry
from service.writer import LOST, REBUILD, ModelWriter, WriterExit

logger = logging.getLogger(__name__)

_EVENTS_BLOCK_MS = 1000
#: At shutdown, background tasks get this long to end once cancelled.
_STOP_WAIT_SECONDS = 3.0
#: A deleted model's keys go before its catalog entry: wait this long before calling
#: "listed but its keys are gone" a loss rather than a deletion in progress.
_DELETE_SETTLE_SECONDS = 1.0
#: Re-persisting a model Redis lost is retried (a Redis that just restarted may still
#: drop a command) for this long before its waiting requests are answered 503.
_REPERSIST_SECONDS = 10.0
_REPERSIST_FIRST_BACKOFF = 0.05
_REPERSIST_MAX_BACKOFF = 1.0


@dataclass
class DataLoss:
    """What this replica saw of Redis losing data under it."""

    detected: int = 0
    last_at: float | None = None
    repersisted: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        last = None if self.last_at is None else dt.datetime.fromtimestamp(self.last_at, dt.timezone.utc)
        return {
            "detected": self.detected,
            "last_at": last.isoformat() if last else None,
            "repersisted_models": self.repersisted[-100:],
        }


class Replica:
    """Membership, ownership and hand-over of this replica's models."""

    def __init__(
        self, redis: Redis, health: RedisHealth, settings: Settings, telemetry: Telemetry, registry: Registry
    ) -> None:
        self.redis = redis
        self.health = health
        self.settings = settings
        self.telemetry = telemetry
        self.registry = registry
        self.id = settings.replica_id
        self.prefix = settings.KEY_PREFIX
        self.lease_ms = int(settings.LEASE_SECONDS * 1000)
        self.started_at = time.time()
        self.live: list[str] = [self.id]
        self.instance: str | None = None
        self.data_loss = DataLoss()
        self._ctx = Context(redis, health, settings, telemetry)
        self._poll = min(1.0, settings.LEASE_SECONDS / 5)
        self._renew_every = settings.LEASE_SECONDS / 3
        self._host = socket.gethostname()
        self._taking: dict[str, Fence] = {}
        self._free_since: dict[str, float] = {}
        self._stolen: dict[str, float] = {}  # models taken as orphans, and when
        self._orphan_hold = 10 * settings.LEASE_SECONDS
        self._last_heartbeat = float("-inf")
        self._last_orphan_check = float("-inf")
        self._wake = asyncio.Event()
        self._stopping = False
        self._renewing = True
        self._tasks: list[asyncio.Task[None]] = []
        self._spawned: set[asyncio.Task[Any]] = set()
        registry.on_created = self.claim_if_placed
        registry.on_unowned = self.wake

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Join, follow the catalog, take over the models placed here (awaited, so a
        lone replica serves its models once started), then keep doing so."""
        await self._check_instance()
        await self._heartbeat()
        await self._publish(events.JOINED, self.id)
        await self._round(wait=True)
        self._tasks = [
            asyncio.create_task(self._loop(), name="replica:ownership"),
            asyncio.create_task(self._renew_loop(), name="replica:leases"),
            asyncio.create_task(self._events_loop(), name="replica:events"),
        ]

    async def stop(self) -> None:
        """Leave, and hand every owned model over (last snapshot, lease released)."""
        self._stopping = True  # the loops end on it (a cancelled blocking Redis read may not)
        renewer = self._tasks[1] if len(self._tasks) > 1 else None
        others = [t for t in self._tasks if t is not renewer]
        for task in others:
            task.cancel()
        with contextlib.suppress(*UNREACHABLE, RedisError):
            await membership.leave(self.redis, self.prefix, self.id)
            await self._publish(events.LEFT, self.id)
        writers = [(h, h.writer) for h in self.registry.handles() if h.writer is not None]
        await asyncio.gather(*(w.stop("shutdown") for _, w in writers), return_exceptions=True)
        for handle, _ in writers:
            await self._publish(events.RELEASED, handle.name)
        self._renewing = False
        tasks = [*self._tasks, *self._spawned]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=_STOP_WAIT_SECONDS)
        for handle in self.registry.handles():
            await handle.remote.close(UnavailableError("the service is stopping"))

    def wake(self) -> None:
        self._wake.set()

    def owned(self) -> list[str]:
        return sorted(h.name for h in self.registry.handles() if h.writer is not None)

    # ------------------------------------------------------------------- rounds
    async def _loop(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll)
            self._wake.clear()
            try:
                await self._round(wait=False)
            except (*UNREACHABLE, RedisError) as exc:
                if isinstance(exc, UNREACHABLE):
                    self.health.mark_down(exc)
                logger.debug("replica round failed: %s", exc)
            except Exception:
                logger.exception("replica round failed")

    async def _round(self, *, wait: bool) -> None:
        """Heartbeat when due, follow the catalog, claim what is placed here, hand over
        what is not."""
        if not self.health.up:
            return
        now = time.monotonic()
        if now - self._last_heartbeat >= self._renew_every:
            await self._heartbeat()
        else:
            self.live = await membership.live(self.redis, self.prefix)
        await self._check_instance()
        await self.registry.sync_catalog()
        handles = [h for h in self.registry.handles() if h.unrecoverable is None]
        assignment = placement.assign([h.name for h in handles], self._live_here())
        claims: list[Awaitable[None]] = []
        for handle in handles:
            target = assignment.get(handle.name)
            if handle.writer is not None:
                held_since = self._stolen.get(handle.name, float("-inf"))
                if (
                    target not in (None, self.id)
                    and handle.writer.accepting
                    and not self._stopping
                    and now - held_since > self._orphan_hold
                ):
                    self._spawn(self._hand_over(handle))
            elif target == self.id and handle.name not in self._taking:
                claims.append(self._claim(handle))
        if now - self._last_orphan_check >= self.settings.LEASE_SECONDS / 2:
            self._last_orphan_check = now
            claims.extend(await self._orphans([h for h in handles if assignment.get(h.name) != self.id]))
        if wait:
            await asyncio.gather(*claims)
        else:
            for claim in claims:
                self._spawn(claim)

    async def _orphans(self, handles: list[ModelHandle]) -> list[Awaitable[None]]:
        """Claims of models placed elsewhere whose lease stayed free for a lease period."""
        now = time.monotonic()
        out: list[Awaitable[None]] = []
        for handle in handles:
            if handle.writer is not None or handle.name in self._taking:
                continue
            if await leases.holder(self.redis, self.prefix, handle.name) is not None:
                self._free_since.pop(handle.name, None)
                continue
            since = self._free_since.setdefault(handle.name, now)
            if now - since >= self.settings.LEASE_SECONDS:
                logger.warning("model %s: unowned for %.1f s; taking it here", handle.name, now - since)
                self._stolen[handle.name] = now  # kept a while: its placed owner did not take it
                out.append(self._claim(handle))
        return out

    async def claim_if_placed(self, handle: ModelHandle) -> None:
        """Right after a create on this replica: take the model at once if it is placed here."""
        names = sorted({h.name for h in self.registry.handles()} | {handle.name})
        if placement.assign(names, self._live_here()).get(handle.name) == self.id:
            with contextlib.suppress(*UNREACHABLE, RedisError):
                await self._claim(handle)
        else:
            self.wake()

    def _live_here(self) -> list[str]:
        """The live replicas, this one included (its own heartbeat may not be in yet)."""
        return self.live if self.id in self.live else sorted({*self.live, self.id})

    # --------------------------------------------------------------- ownership
    def _dead_here(self, holder: str) -> bool:
        """Whether a lease holder is certainly dead: this replica's own id (a previous
        process under the same explicit id, or this one after a failure), or a
        ``host:pid`` of this host whose process is gone."""
        if holder == self.id:
            return True
        host, _, pid = holder.rpartition(":")
        if host != self._host or not pid.isdigit() or int(pid) == os.getpid():
            return False
        return not psutil.pid_exists(int(pid))

    async def _acquire(self, handle: ModelHandle) -> Fence | None:
        got = await leases.acquire(
            self.redis, self.prefix, handle.name, handle.incarnation, self.id, self.lease_ms
        )
        if isinstance(got, str) and self._dead_here(got):
            logger.info("model %s: its lease holder %s is dead; taking the lease now", handle.name, got)
            got = await leases.acquire(
                self.redis, self.prefix, handle.name, handle.incarnation, self.id, self.lease_ms, got
            )
        return got if isinstance(got, Fence) else None

    async def _claim(self, handle: ModelHandle) -> None:
        name = handle.name
        if handle.writer is not None or name in self._taking or self._stopping:
            return
        self._taking[name] = Fence(self.prefix, name, "")  # reserved while acquiring
        try:
            try:
                fence = await self._acquire(handle)
            except ModelGone:
                self.wake()  # deleted or re-created: the next round follows the catalog
                return
            if fence is None:
                return
            self._taking[name] = fence
            self.telemetry.lease_acquisitions.inc()
            try:
                async with handle.state_lock:
                    writer = await take_over(handle, fence, self._ctx, self._writer_exited(handle))
            except Unrecoverable as exc:
                logger.error("model %s cannot be recovered: %s", name, exc)
                handle.unrecoverable = str(exc)
                await self._release(fence)
                return
            except (FencedError, ModelGone) as exc:
                logger.warning("model %s: lost during its takeover: %s", name, exc)
                return
            except (*UNREACHABLE, RedisError) as exc:
                if isinstance(exc, UNREACHABLE):
                    self.health.mark_down(exc)
                logger.warning("model %s: takeover failed, will retry: %s", name, exc)
                await self._release(fence)
                return
            if self._stopping:
                handle.writer = writer
                writer.start()
                await writer.stop("shutdown")
                return
            handle.writer = writer
            writer.start()
            self._free_since.pop(name, None)
            self._schedule_heartbeat()
        finally:
            self._taking.pop(name, None)

    async def _hand_over(self, handle: ModelHandle) -> None:
        writer = handle.writer
        if writer is None:
            return
        logger.info("model %s: handing over (placed on another replica)", handle.name)
        await writer.stop("handover")

    async def _release(self, fence: Fence) -> None:
        with contextlib.suppress(FencedError, *UNREACHABLE, RedisError):
            await leases.release(self.redis, fence)

    async def _renew_loop(self) -> None:
        while self._renewing:  # on while stop() hands the models over
            await asyncio.sleep(self._renew_every)
            owned = [(h.writer, h.writer.fence) for h in self.registry.handles() if h.writer is not None]
            taking = [(None, f) for f in self._taking.values() if f.token]
            for writer, fence in [*owned, *taking]:
                try:
                    status = await leases.renew(self.redis, fence, self.lease_ms)
                except (*UNREACHABLE, RedisError) as exc:
                    logger.warning("model %s: lease renewal failed: %s", fence.name, exc)
                    continue
                if status != "ok" and writer is not None and writer.fence is fence:
                    logger.warning("model %s: lease lost (%s); stepping down", fence.name, status)
                    self.telemetry.lease_losses.labels(status).inc()
                    writer.lose(status)

    # ------------------------------------------------------------ writer exits
    def _writer_exited(self, handle: ModelHandle) -> Any:
        def on_exit(writer: ModelWriter, exit_: WriterExit) -> None:
            if handle.writer is writer:
                handle.writer = None
            self._spawn(self._after_exit(handle, writer, exit_))

        return on_exit

    async def _after_exit(self, handle: ModelHandle, writer: ModelWriter, exit_: WriterExit) -> None:
        reason = exit_.reason
        self._schedule_heartbeat()
        if reason in ("handover", "shutdown"):
            handle.follower.set_current(writer.snapshot_log_id, writer.last_id)
            if reason == "handover":
                await self._publish(events.RELEASED, handle.name)
            return
        if reason == "deleted":
            return
        if reason == "gone" and await self._lost_by_redis(handle):
            await self._repersist(handle, writer, exit_)
            return
        if reason == "gone":
            error = NotFoundError(f"model {handle.name!r} was deleted")
            for job in (*exit_.unlogged, *exit_.unanswered):
                if not job.future.done():
                    job.future.set_exception(error)
            await self.registry.drop(handle.name, error)
            return
        # taken, expired, rebuild: the log holds the truth; the new owner answers
        if reason in LOST:
            self.telemetry.lease_losses.labels(reason).inc()
        handle.follower.invalidate()
        for job in exit_.unlogged:
            handle.remote.resubmit(job)
        for job in exit_.unanswered:
            handle.remote.adopt(job)
        if reason == REBUILD:
            await self._release(writer.fence)
            self.wake()

    # --------------------------------------------------------------- data loss
    async def _check_instance(self) -> None:
        """The instance marker: written once; if it vanished, Redis lost data under us."""
        key = keys.instance_key(self.prefix)
        current = await self.redis.get(key)
        if current is None:
            await self.redis.set(key, uuid.uuid4().hex, nx=True)
            current = await self.redis.get(key)
        marker = current.decode() if current is not None else None
        if self.instance is not None and marker != self.instance:
            self._data_lost("the instance marker changed (Redis restarted empty, or was flushed)")
        self.instance = marker

    def _data_lost(self, why: str) -> None:
        logger.error("REDIS LOST DATA: %s; models this replica owns are re-persisted from memory", why)
        self.data_loss.detected += 1
        self.data_loss.last_at = time.time()
        self.telemetry.redis_data_loss.inc()
        self.registry.keep_missing_until = time.monotonic() + 3 * self.settings.LEASE_SECONDS

    async def _lost_by_redis(self, handle: ModelHandle) -> bool:
        """A model's keys are gone: lost by Redis (True) or deleted (False)?"""
        try:
            await self._check_instance()
            if self.registry.keep_missing_until > time.monotonic():
                return True
            listed = await catalog.listed_incarnation(self.redis, self.prefix, handle.name)
            if listed == handle.incarnation:
                await asyncio.sleep(_DELETE_SETTLE_SECONDS)
                listed = await catalog.listed_incarnation(self.redis, self.prefix, handle.name)
                if listed == handle.incarnation:
                    self._data_lost(f"the keys of model {handle.name} vanished while it is listed")
                    return True
        except (*UNREACHABLE, RedisError):
            return True  # cannot tell now: keeping the state is the safe side
        return False

    async def _write_back(
        self, handle: ModelHandle, writer: ModelWriter, incarnation: str
    ) -> tuple[int, Fence]:
        """One attempt: the model's state under ``incarnation``, its lease, and its
        idempotency records. Safe to repeat after a failure at any point."""
        model = handle.model
        name = handle.name
        step, state = await executors.of(model).write(model.state_bytes)
        snap = snapshots.Snapshot(state, step, log.START_ID, model.created_at, model.updated_at, time.time())
        existing = await catalog.create_model(
            self.redis,
            self.prefix,
            name,
            incarnation,
            model.spec.model_dump_json().encode(),
            snap,
            handle.layers,
        )
        if existing is not None and existing != incarnation:
            raise RuntimeError(f"it was created again meanwhile (incarnation {existing})")
        handle.incarnation = handle.remote.incarnation = incarnation
        fence = await self._acquire(handle)
        if fence is None:
            raise RuntimeError("its new lease was taken")
        self._taking[name] = fence  # renewed by the renew loop until the writer runs
        records = writer.records
        records.mark_all_unpersisted()
        added, _ = records.changes()
        if added:
            write = FencedWrite(fence)
            write.hset(keys.idempotency_key(self.prefix, name), added)
            await write.run(self.redis)
        records.mark_persisted()
        return step, fence

    async def _repersist(self, handle: ModelHandle, writer: ModelWriter, exit_: WriterExit) -> None:
        """Write back what this replica holds of a model Redis lost, under a new
        incarnation, take its lease, answer what was applied, requeue the rest.

        The name stays reserved in ``_taking`` throughout: the placement loop would
        otherwise see a listed model with no writer and claim it (stealing this
        replica's own new lease), starting from the snapshot without the idempotency
        records, so a retry of a request applied before the loss would apply twice."""
        name = handle.name
        while name in self._taking:  # a claim is acquiring it: wait for it to settle
            await asyncio.sleep(_REPERSIST_FIRST_BACKOFF)
        self._taking[name] = Fence(self.prefix, name, "")
        try:
            await self._repersist_reserved(handle, writer, exit_)
        finally:
            self._taking.pop(name, None)

    async def _repersist_reserved(self, handle: ModelHandle, writer: ModelWriter, exit_: WriterExit) -> None:
        name = handle.name
        if handle.writer is not None:  # a claim got it meanwhile, from what Redis still had
            error = UnavailableError(f"Redis lost model {name!r}; it was recovered from Redis: retry")
            for job in (*exit_.unlogged, *exit_.unanswered):
                if not job.future.done():
                    job.future.set_exception(error)
            return
        incarnation = uuid.uuid4().hex  # the same for every attempt: a create that landed unseen is ours
        backoff = _REPERSIST_FIRST_BACKOFF
        deadline = time.monotonic() + _REPERSIST_SECONDS
        while True:
            try:
                step, fence = await self._write_back(handle, writer, incarnation)
                break
            except (*UNREACHABLE, RedisError) as exc:
                if time.monotonic() + backoff > deadline:
                    failure: Exception = exc
                else:
                    logger.warning("model %s: re-persisting it failed, will retry: %s", name, exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _REPERSIST_MAX_BACKOFF)
                    continue
            except Exception as exc:  # answered below, whatever it was
                failure = exc
            logger.error("model %s: could not re-persist it after Redis lost it: %s", name, failure)
            error = UnavailableError(f"Redis lost model {name!r} and it could not be restored: {failure}")
            for job in (*exit_.unlogged, *exit_.unanswered):
                if not job.future.done():
                    job.future.set_exception(error)
            return
        records = writer.records
        new = self._ctx.writer(
            handle, fence, records, log.START_ID, step, log.START_ID, self._writer_exited(handle)
        )
        handle.writer = new
        new.start()
        for job in exit_.unanswered:
            answer = exit_.answers.get(job.req)
            if answer is not None and not job.future.done():
                job.future.set_result(answer)
            elif not job.future.done():
                new.submit(job)
        for job in exit_.unlogged:
            new.submit(job)
        self.data_loss.repersisted.append(name)
        self.telemetry.models_repersisted.inc()
        logger.error("model %s: re-persisted from memory at step %d after Redis lost it", name, step)
        await self._publish(events.CREATED, name)

    # ------------------------------------------------------------- membership
    def _schedule_heartbeat(self) -> None:
        self._last_heartbeat = float("-inf")
        self.wake()

    async def _heartbeat(self) -> None:
        info = {"started_at": self.started_at, "models": self.owned(), "pid": os.getpid(), "host": self._host}
        self.live = await membership.heartbeat(self.redis, self.prefix, self.id, self.lease_ms, info)
        self._last_heartbeat = time.monotonic()
        self.telemetry.replicas_live.set(len(self.live))
        self.telemetry.models_owned.set(len(info["models"]))
        for other in self.live:  # a crashed process of this host still counts as live: drop it
            if other != self.id and self._dead_here(other):
                await membership.leave(self.redis, self.prefix, other)

    async def replicas(self) -> list[dict[str, Any]]:
        """The live replicas and what each says it owns."""
        out = []
        for replica in await membership.live(self.redis, self.prefix):
            info = await membership.describe(self.redis, self.prefix, replica)
            out.append(
                {
                    "id": replica,
                    "models": info.get("models", []),
                    "started_at": info.get("started_at"),
                    "self": replica == self.id,
                }
            )
        return out

    async def _events_loop(self) -> None:
        cursor = "$"
        while not self._stopping:
            try:
                if cursor == "$":
                    cursor = await events.last_id(self.redis, self.prefix)
                cursor, got = await events.wait(self.redis, self.prefix, cursor, _EVENTS_BLOCK_MS)
            except (*UNREACHABLE, RedisError):
                await asyncio.sleep(self._poll)
                continue
            if any(replica != self.id for _, _, replica in got):
                self.wake()

    async def _publish(self, kind: str, subject: str) -> None:
        await events.announce(self.redis, self.prefix, kind, subject, self.id)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)
